"""One router per resource, all mounted under ``/api`` by ``api.app.create_app``."""
