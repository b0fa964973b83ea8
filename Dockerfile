# ga3c on the official TensorFlow GPU image. Untested here: no Docker engine on the
# development machine (see README, Status). The tag must match the TensorFlow that
# pyproject.toml allows.
FROM tensorflow/tensorflow:2.21.0-gpu

WORKDIR /opt/ga3c
COPY pyproject.toml README.md ./
COPY ga3c ./ga3c
COPY configs ./configs
RUN pip install --no-cache-dir -e .

RUN useradd --create-home ga3c && mkdir -p /runs && chown ga3c /runs
USER ga3c
VOLUME ["/runs"]
ENTRYPOINT ["ga3c-train"]
CMD ["--flagfile=configs/cartpole.cfg", "--logdir=/runs/cartpole"]
