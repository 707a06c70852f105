# Weft on the embedded defaults: segment files and SQLite under /data.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/weft weft \
    && mkdir /data \
    && chown weft:weft /data

# Only what the package build needs (see .dockerignore); the source is removed
# after the install, so `python -m app` imports the installed package.
COPY pyproject.toml README.md /src/
COPY app /src/app
# The check after the install: the app imports, and the viewer's pages (package
# data, not modules) came along.
RUN pip install /src \
    && rm -rf /src \
    && python -c "from app.api.ui import UI_DIR; from app.main import create_app; assert (UI_DIR / 'index.html').is_file()"

ENV WEFT_DATA_DIR=/data \
    WEFT_HOST=0.0.0.0
VOLUME /data
EXPOSE 3060
USER weft
WORKDIR /home/weft

HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('WEFT_PORT', '3060'); sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:' + port + '/healthz', timeout=4).status == 200 else 1)"]

CMD ["python", "-m", "app"]
