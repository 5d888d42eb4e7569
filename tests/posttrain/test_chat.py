import jinja2
import pytest

from homegrown.errors import HomegrownError
from homegrown.posttrain.chat import CHAT_TEMPLATE, render_prompt

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is os.path.join?"},
            {"role": "assistant", "content": "It joins path parts."}, {"role": "user", "content": "Thanks!"}]


@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_python_and_jinja_templates_agree(add_generation_prompt):
    jinja = jinja2.Environment().from_string(CHAT_TEMPLATE)
    expected = jinja.render(messages=MESSAGES, add_generation_prompt=add_generation_prompt)
    assert render_prompt(MESSAGES, add_generation_prompt) == expected
    assert expected.endswith("<|assistant|>\n") == add_generation_prompt


def test_unknown_role_is_a_user_error():
    with pytest.raises(HomegrownError, match="unknown chat role"):
        render_prompt([{"role": "tool", "content": "x"}])
