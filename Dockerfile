# The finrag assistant's API. compose.yaml runs it beside Qdrant and Ollama; it can also run alone with the
# embedded LLM and embedded Qdrant on its data volume:
#
#   docker build -t finrag-assistant .
#   docker run -p 8000:8000 -v finrag-data:/data finrag-assistant
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    DATA_DIR=/data \
    HOST=0.0.0.0 \
    PORT=8000

# xllamacpp (the embedded llama.cpp) links against OpenMP and libstdc++.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 libstdc++6 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# The CPU build of torch first: from PyPI, a bare `torch` pulls a multi-GB CUDA build.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

COPY pyproject.toml README.md ./
COPY assistant ./assistant
COPY ingest ./ingest
COPY eval ./eval
RUN pip install .

RUN useradd --create-home --uid 10001 finrag \
    && mkdir -p /data \
    && chown finrag:finrag /data
USER finrag
VOLUME ["/data"]

EXPOSE 8000
CMD ["python", "-m", "assistant"]
