"""Where mail comes in: SMTP (aiosmtpd, STARTTLS) or a milter inside an
existing MTA.  Each recipient is checked against the routes here, and an
accepted message is handed on durably: to the spool (SMTP) or straight to
the pipeline (milter, whose MTA keeps its own queue)."""
