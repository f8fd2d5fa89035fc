"""Storage backends tested against real servers on loopback (Ceph radosgw, Azurite, gcp-storage-emulator)."""
