"""Local stand-ins for IAM Credentials, STS and the GCE metadata server.

Each emulator runs as its own process on a loopback port; see docs/emulators.md.
"""
