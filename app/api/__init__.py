"""HTTP edge: parse and validate, call the domain, shape the response."""
