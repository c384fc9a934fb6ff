# Qasino server image.
#   docker build -t qasino .
#   docker run -d --name qasino -p 15000:15000 -p 15596-15598:15596-15598 \
#       -v qasino-data:/data -v "$PWD/config:/config:ro" qasino
# /config holds qasino.toml (settings), and optionally views.conf, the TLS
# certificate and key and the htpasswd file; /data holds the SQLite files.
# See docs/deploy.md.
FROM python:3.11-slim

WORKDIR /src
COPY setup.py pyproject.toml README.md LICENSE ./
COPY qasino ./qasino
RUN pip install --no-cache-dir . \
    && rm -rf /src \
    && useradd --system --uid 10001 --user-group --home-dir /data --no-create-home qasino \
    && mkdir -p /data /config \
    && chown qasino:qasino /data
# The default settings; a /config volume brings its own qasino.toml.
COPY contrib/qasino.toml /config/qasino.toml

# Settings the image fixes (environment beats the config file; flags beat both).
ENV QASINO_DB_DIR=/data \
    QASINO_VIEWS_FILE=/config/views.conf \
    QASINO_HTTPS_PORT=15443 \
    PYTHONUNBUFFERED=1

USER qasino
WORKDIR /data
VOLUME ["/data", "/config"]
# line protocol, ZeroMQ PUB (generation signal), HTTP (API, UI, /metrics),
# ZeroMQ REP, HTTPS (when tls_cert and tls_key are set in qasino.toml)
EXPOSE 15000 15596 15597 15598 15443
# Ready once a snapshot was taken and rotations keep up (/-/ready).
HEALTHCHECK --interval=30s --timeout=5s --start-period=90s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/-/ready' % os.environ.get('QASINO_HTTP_PORT', '15597'), timeout=4)"]
ENTRYPOINT ["qasino_server"]
CMD ["--config", "/config/qasino.toml"]
