"""The seed's Keras model, for the Keras tests and for scripts they run under TensorFlow in their
own process (this module imports Keras only, never torch)."""

from __future__ import annotations

import keras
from keras.layers import Conv2D, Dense, Flatten, MaxPooling2D
from keras.models import Sequential


def seed_model(
    size: int = 640, c1: int = 32, c2: int = 16, dense: int = 8, classes: int = 3
) -> keras.Model:
    """The seed's model, written as the seed writes it (the defaults are the seed's values)."""
    model = Sequential()
    model.add(Conv2D(c1, (3, 3), padding="same", input_shape=(size, size, 3), activation="relu"))
    model.add(MaxPooling2D(pool_size=(3, 3)))
    model.add(Conv2D(c2, (3, 3), padding="same", activation="relu"))
    model.add(MaxPooling2D(pool_size=(2, 2)))
    model.add(Flatten())
    model.add(Dense(dense, activation="relu"))
    model.add(Dense(classes, activation="softmax"))
    return model
