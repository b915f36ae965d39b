# The same steps as the README: the scripts create .venv and install the project.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends build-essential git \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY . .
RUN bash scripts/venv.sh
# the README's two commands
CMD ["bash", "scripts/demo.sh"]
# tests: docker run IMAGE bash scripts/test.sh
