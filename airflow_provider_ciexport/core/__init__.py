"""What the API clients and the engine share: rate limiting, the account's share, the contact schema."""
