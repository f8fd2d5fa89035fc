"""``python -m gateway`` is the same as the ``attachment-gateway`` command."""
from gateway.cli import run

# Guarded: a child the disarm fork server starts may import this module
# under another name, and must not run the command line again.
if __name__ == "__main__":
    run()
