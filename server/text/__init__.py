"""Text generation: plain request/event types, the engine interface and its implementations."""
