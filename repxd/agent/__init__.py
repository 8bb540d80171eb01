"""The agent role: registers, heartbeats, claims attempts and runs them."""
