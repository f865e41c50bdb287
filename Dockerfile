# Remixer: a slim, non-root image. Mount a volume on /data to keep the database.
# docker-compose.yml runs it with the settings from .env; see README "Operations".
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DATABASE_PATH=/data/bot.sqlite3 \
    WEB_HOST=0.0.0.0 \
    WEB_PORT=8080

WORKDIR /app
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY cogs ./cogs
RUN pip install --no-cache-dir . \
    && groupadd --system --gid 10001 remixer \
    && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home remixer \
    && mkdir -p /data && chown 10001:10001 /data

USER 10001:10001
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('WEB_PORT', '8080'), timeout=4)"]
# SIGTERM (docker stop) shuts down gracefully: give it the compose file's stop_grace_period.
STOPSIGNAL SIGTERM
CMD ["python", "-m", "bot"]
