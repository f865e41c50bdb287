"""Remixer: a self-hosted Discord bot for community image-to-image and inpainting."""
