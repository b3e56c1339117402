"""Invalid hyperparameters are rejected with a ValueError that names the argument."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from .strategies import invalid_hyperparams


@given(data=st.data())
def test_rejects_invalid(data, driver, optimizer, invalid_argument):
    hp, blamed = data.draw(
        invalid_hyperparams(optimizer, invalid_argument, negative_lr=driver.negative_lr),
        label="hyperparams",
    )
    spelled = driver.names.get(blamed, blamed)
    with pytest.raises(ValueError, match=re.escape(spelled)):
        driver.construct(optimizer, hp)
