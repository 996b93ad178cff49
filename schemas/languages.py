"""The language codes Whisper knows, and the one check of a requested code.

Both sides use it: the gateway refuses an unknown code at submit (422), and
the engine refuses one it is handed anyway (a permanent UNSUPPORTED_LANGUAGE
failure), where faster-whisper would raise a bare ValueError that looked
transient and had the job redelivered and fall back. The list is faster-
whisper's (`faster_whisper.tokenizer._LANGUAGE_CODES`, private, and the
gateway does not install it); tests/test_media_options.py checks the copy.
"""

from __future__ import annotations

from schemas.errors import InvalidInput

WHISPER_LANGUAGES = frozenset(
    "af am ar as az ba be bg bn bo br bs ca cs cy da de el en es et eu fa fi fo fr gl gu ha haw he hi hr ht hu "
    "hy id is it ja jw ka kk km kn ko la lb ln lo lt lv mg mi mk ml mn mr ms mt my ne nl nn no oc pa pl ps pt ro "
    "ru sa sd si sk sl sn so sq sr su sv sw ta te tg th tk tl tr tt uk ur uz vi yi yo zh yue".split()
)


def normalized(language: str | None) -> str | None:
    """Codes are compared lower-case, as Whisper's tokens spell them."""
    return language.strip().lower() if language else None


def is_known(language: str | None) -> bool:
    """None (detect the language) or a code Whisper has a token for."""
    code = normalized(language)
    return code is None or code in WHISPER_LANGUAGES


def check_language(language: str | None) -> None:
    """InvalidInput (422) for a code Whisper does not know."""
    if not is_known(language):
        raise InvalidInput(
            f"options.language: {language!r} is not a language Whisper knows (ISO 639-1, e.g. 'en', 'de')"
        )
