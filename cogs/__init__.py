"""Slash-command surfaces. Cogs depend on bot services; nothing in bot/ imports a cog."""
