"""Online serving of a registered ChEX: model resolution, the HTTP API, the Ray Serve application, the page."""
