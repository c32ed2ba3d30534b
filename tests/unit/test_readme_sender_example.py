"""The sender config example in README.md is a config the sender accepts (docs that parse)."""

import re
from pathlib import Path

from mailfleet_sender import config

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_sender_config_example_parses() -> None:
    block = re.search(r"## The sender and its config.*?```yaml\n(.*?)```", README.read_text(),
                      re.S)
    assert block is not None, "README lost its sender config example"
    parsed = config.parse_config(block.group(1))
    assert parsed.throttles.rate is not None
    assert [c.name for c in parsed.classes] == ["transactional", "marketing"]
