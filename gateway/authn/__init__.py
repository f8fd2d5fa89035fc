"""Message authentication: verify what arrived (DKIM, SPF, DMARC, ARC)
before any change, and seal what leaves (ARC, optional DKIM) after it.

``verify`` runs on the spooled original before the policies, because the
rewrite breaks the sender's body hash; ``seal`` runs on the final bytes,
after the ``Authentication-Results`` header is in place, because dkimpy
builds the ARC set from that header and signs the message as it will go.
"""
