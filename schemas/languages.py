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

# Whisper's codes and the English names its tokenizer gives them (openai-whisper's
# `tokenizer.LANGUAGES`): OpenAI's verbose_json spells the language by name.
LANGUAGE_NAMES: dict[str, str] = {
    "en": "english", "zh": "chinese", "de": "german", "es": "spanish", "ru": "russian", "ko": "korean",
    "fr": "french", "ja": "japanese", "pt": "portuguese", "tr": "turkish", "pl": "polish", "ca": "catalan",
    "nl": "dutch", "ar": "arabic", "sv": "swedish", "it": "italian", "id": "indonesian", "hi": "hindi",
    "fi": "finnish", "vi": "vietnamese", "he": "hebrew", "uk": "ukrainian", "el": "greek", "ms": "malay",
    "cs": "czech", "ro": "romanian", "da": "danish", "hu": "hungarian", "ta": "tamil", "no": "norwegian",
    "th": "thai", "ur": "urdu", "hr": "croatian", "bg": "bulgarian", "lt": "lithuanian", "la": "latin",
    "mi": "maori", "ml": "malayalam", "cy": "welsh", "sk": "slovak", "te": "telugu", "fa": "persian",
    "lv": "latvian", "bn": "bengali", "sr": "serbian", "az": "azerbaijani", "sl": "slovenian", "kn": "kannada",
    "et": "estonian", "mk": "macedonian", "br": "breton", "eu": "basque", "is": "icelandic", "hy": "armenian",
    "ne": "nepali", "mn": "mongolian", "bs": "bosnian", "kk": "kazakh", "sq": "albanian", "sw": "swahili",
    "gl": "galician", "mr": "marathi", "pa": "punjabi", "si": "sinhala", "km": "khmer", "sn": "shona",
    "yo": "yoruba", "so": "somali", "af": "afrikaans", "oc": "occitan", "ka": "georgian", "be": "belarusian",
    "tg": "tajik", "sd": "sindhi", "gu": "gujarati", "am": "amharic", "yi": "yiddish", "lo": "lao",
    "uz": "uzbek", "fo": "faroese", "ht": "haitian creole", "ps": "pashto", "tk": "turkmen", "nn": "nynorsk",
    "mt": "maltese", "sa": "sanskrit", "lb": "luxembourgish", "my": "myanmar", "bo": "tibetan", "tl": "tagalog",
    "mg": "malagasy", "as": "assamese", "tt": "tatar", "haw": "hawaiian", "ln": "lingala", "ha": "hausa",
    "ba": "bashkir", "jw": "javanese", "su": "sundanese", "yue": "cantonese",
}  # fmt: skip
WHISPER_LANGUAGES = frozenset(LANGUAGE_NAMES)


def language_name(code: str | None) -> str | None:
    """`en` → `english`, as Whisper and OpenAI spell it; an unknown code as given."""
    return LANGUAGE_NAMES.get(normalized(code) or "", code) if code else code


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
