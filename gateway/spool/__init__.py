"""The spool: where a message lives from "250 queued" until its next hop takes it.

``queue`` holds the directory queues (Postfix's model: incoming, active,
deferred, hold, corrupt), ``envelope`` the records a message carries, and
``durable`` the fsync-and-rename writes everything durable goes through.
The queue's names are re-exported here, as the rest of the gateway uses them.
"""
from gateway.spool.durable import fsync_dir, is_disk_full, write_atomic
from gateway.spool.envelope import Envelope, State, new_queue_id
from gateway.spool.queue import (
                                 ENVELOPE,
                                 ENVELOPE_FOOTER,
                                 FREE,
                                 MESSAGE,
                                 QUEUES,
                                 RESULT,
                                 REWRITTEN,
                                 STATE,
                                 Handle,
                                 Locked,
                                 Reception,
                                 Spool,
                                 SpoolError,
                                 commit_all,
                                 message_source,
                                 read_envelope,
)

__all__ = ["ENVELOPE", "ENVELOPE_FOOTER", "FREE", "MESSAGE", "QUEUES", "RESULT", "REWRITTEN", "STATE", "Envelope",
           "Handle", "Locked", "Reception", "Spool", "SpoolError", "State", "commit_all", "fsync_dir", "is_disk_full",
           "message_source", "new_queue_id", "read_envelope", "write_atomic"]
