"""attachment-gateway: an inbound MX relay that moves large attachments to
object storage and forwards the slimmed message with signed, expiring links."""

__version__ = "0.1.0"
