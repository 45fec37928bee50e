"""One adapter per vendor: the engine's ``Destination`` interface over that vendor's API client."""
