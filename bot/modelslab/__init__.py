"""The ModelsLab API: endpoint catalogue, payloads, responses and the HTTP client."""
