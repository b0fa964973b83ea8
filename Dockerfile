# ga3c on the official TensorFlow GPU image.
#   docker build -t ga3c .
#   docker run --gpus all -v "$PWD/runs:/runs" ga3c --flagfile=configs/pong.cfg --logdir=/runs/pong
# The tag pins the TensorFlow that pyproject.toml allows (tests/test_docker.py checks it).
# Not built on the development machine (no Docker engine there): see the README's Docker command.
FROM tensorflow/tensorflow:2.21.0-gpu

WORKDIR /opt/ga3c
COPY pyproject.toml README.md ./
COPY ga3c ./ga3c
COPY configs ./configs
# The README's install command (CI runs the same one, plus the test extra).
RUN pip install --no-cache-dir -e .

# A non-root user; runs go to the /runs volume (also the default runs/ of the configs).
RUN useradd --create-home ga3c && mkdir -p /runs && chown ga3c /runs && ln -s /runs runs
USER ga3c
VOLUME ["/runs"]
ENTRYPOINT ["ga3c-train"]
CMD ["--flagfile=configs/cartpole.cfg", "--logdir=/runs/cartpole"]
