# certlake serve in a container: docker build -t certlake . && docker run -p 8080:8080 -v certlake:/var/lib/certlake certlake
# The environment is built as `./run bootstrap` builds it: the pinned, hashed lock, then the package.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/certlake/venv/bin:$PATH

RUN useradd --system --uid 10001 --user-group --create-home --home-dir /var/lib/certlake certlake

WORKDIR /opt/certlake
COPY requirements.lock ./
RUN python -m venv venv && venv/bin/pip install --require-hashes -r requirements.lock
COPY pyproject.toml README.md ./
COPY src ./src
# The build backend (setuptools, wheel) comes from the lock too, so nothing unhashed is fetched.
RUN venv/bin/pip install --no-deps --no-build-isolation .

# Relative paths of the configuration (the state file, ./data/certstream) land in the volume;
# a configuration file can be mounted at /etc/certstream/config.yaml.
USER certlake
WORKDIR /var/lib/certlake
VOLUME /var/lib/certlake
EXPOSE 8080
# certlake flushes the archive and saves the state file on SIGTERM: give it the time
# (`docker stop -t 60`, compose's stop_grace_period), not Docker's default 10 s.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('CERTSTREAM_PORT', '8080'), timeout=4)"]
ENTRYPOINT ["certlake"]
CMD ["serve"]
