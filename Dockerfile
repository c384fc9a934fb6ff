# Qasino server image. Build: docker build -t qasino .
# Run:   docker run -p 15000:15000 -p 15596-15598:15596-15598 -v qasino-data:/data qasino
FROM python:3.11-slim

WORKDIR /app
COPY setup.py pyproject.toml README.md views.conf ./
COPY qasino ./qasino
COPY bin ./bin
RUN pip install --no-cache-dir . && useradd --create-home qasino && mkdir -p /data \
    && chown qasino /data

USER qasino
VOLUME ["/data"]
# line protocol, ZeroMQ PUB (generation signal), HTTP, ZeroMQ REP
EXPOSE 15000 15596 15597 15598
ENTRYPOINT ["qasino_server", "--db-dir", "/data", "--views-file", "/app/views.conf"]
