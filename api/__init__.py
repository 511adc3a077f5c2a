"""FastAPI app factory, routers, WebSocket fan-out, auth and the tradecore CLI."""
