"""Benchmarks: devbox vs raw OpenSSH, Ansible and docker save|load (`python -m bench`)."""
