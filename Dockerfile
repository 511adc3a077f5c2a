# tradecore image for the distributed mode (docker-compose.yml): API, relay and workers.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, pinned by requirements.lock, in their own layer: a code change
# does not reinstall them.
COPY pyproject.toml requirements.lock ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + [r for e in ('postgres', 'kafka', 'eventstoredb') for r in p['optional-dependencies'][e]]))" \
        > /tmp/requirements.txt \
    && pip install -c requirements.lock -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY README.md ./
COPY domain ./domain
COPY commands ./commands
COPY projections ./projections
COPY adapters ./adapters
COPY streams ./streams
COPY api ./api
RUN pip install -c requirements.lock '.[postgres,kafka,eventstoredb]'

# Run unprivileged; /data is the working directory, so the embedded default
# (sqlite:///tradecore.db) has somewhere writable when no URL is given.
RUN useradd --create-home --uid 10001 tradecore \
    && mkdir /data \
    && chown tradecore: /data
USER tradecore
WORKDIR /data
VOLUME ["/data"]

EXPOSE 8000
CMD ["tradecore", "serve", "--host", "0.0.0.0"]
