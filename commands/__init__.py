"""Command messages, their handlers, the ports handlers need and the command bus."""
