# GPU inference image: robust-ad on onnxruntime-gpu (CUDA 13, cuDNN 9).
#
#   docker build -t robust-ad .
#   docker run --gpus all -v $PWD/runs:/runs -v $PWD/images:/images robust-ad \
#       score /images --onnx /runs/bottle/model.onnx --out /runs/bottle/results
#
# Without --gpus the same image runs on the CPU (onnxruntime falls back and says so).
FROM nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/robust-ad
COPY pyproject.toml README.md ./
COPY robust_ad ./robust_ad
COPY recipes ./recipes
RUN python3 -m venv /opt/venv && /opt/venv/bin/pip install --upgrade pip && /opt/venv/bin/pip install .
ENV PATH=/opt/venv/bin:$PATH

# Non-root: the container writes only into the folders mounted for it.
RUN useradd --create-home inspector
USER inspector
ENTRYPOINT ["robust-ad"]
CMD ["--help"]
