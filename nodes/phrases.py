"""Parsing of phrase lists typed into a node."""


def parse_phrases(text: str) -> list[str]:
    """Phrases separated by new lines or commas, stripped, empty ones dropped; at least one."""
    phrases = [p.strip() for line in text.splitlines() for p in line.split(",")]
    phrases = [p for p in phrases if p]
    if not phrases:
        raise ValueError("no phrase given: write one phrase per line, e.g. 'red circle'")
    return phrases
