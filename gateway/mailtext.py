"""The texts the gateway writes into mail, in the route's language.

Every sentence a person reads in a forwarded message (the notice in place
of a refused, quarantined, empty, cleaned, stored or unexamined file, the
link lines), in the automatic reply and in a delivery report is a message
of the ``mail`` catalogue (gateway/i18n.py): the English text is the
message id, marked here with ``M_`` so a scan of the code finds every one.
A route's ``language`` picks the catalogue; a message it lacks is English.

Templates are filled by ``fill``: ``{name}`` for a field, ``{{`` and
``}}`` for a brace; a field the text does not know is left as written and
the value of a field is never expanded again (a file named ``{size}``
stays so).  Filling never raises, so a bad translation cannot hold mail;
``check-config`` reports one (``template_errors``, ``catalogue_errors``).
"""
from __future__ import annotations

import gettext
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from babel.numbers import format_decimal

import policies
from gateway import i18n
from policies import M_, Phrase, TypeName, filetypes


def MN_(singular: str, plural: str) -> tuple[str, str]:
    """Mark a message with a plural form (returned unchanged)."""
    return singular, plural


_FIELD = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")
# Anything between braces that is not a simple field or an escaped brace.
_ODD = re.compile(r"\{[^{}]*\}")


def fill(template: str, **values: object) -> str:
    """``template`` with each ``{name}`` in ``values`` replaced, in one pass."""
    def sub(m: re.Match[str]) -> str:
        whole, name = m.group(0), m.group(1)
        if name is None:
            return whole[0]
        return str(values[name]) if name in values else whole
    return _FIELD.sub(sub, template)


def template_fields(template: str) -> set[str]:
    """The field names a template uses (``{name}``; not ``{{name}}``)."""
    return {m.group(1) for m in _FIELD.finditer(template) if m.group(1) is not None}


def template_errors(template: str, allowed: Iterable[str]) -> list[str]:
    """What is wrong with a template whose fields may be ``allowed``: each
    unknown field, and braces that are no field (write ``{{`` for one)."""
    allowed = set(allowed)
    unknown = sorted(template_fields(template) - allowed)
    expected = ", ".join("{" + a + "}" for a in sorted(allowed)) or "no fields"
    errors = [f"unknown field {{{f}}}; the fields allowed are {expected}" for f in unknown]
    stripped = _FIELD.sub("", template)
    odd = _ODD.search(stripped)
    if odd is not None:
        errors.append(f"{odd.group(0)!r} is not a field; the fields allowed are {expected} "
                      f"(write {{{{ and }}}} for a brace)")
    return errors


# -- the messages ---------------------------------------------------------

LINK_LABEL = M_("Secure Attachment: {filename}")
# The name of a file the sender gave none that could be shown.
ATTACHMENT = M_("attachment")
LANDING_LABEL = MN_("Secure Attachments: {count} file", "Secure Attachments: {count} files")

REMOVED = M_("The attachment \"{filename}\" was removed: {reason}.")
REMOVED_UUENCODED = M_("The attachment \"{filename}\" (uuencoded in the text) was removed: {reason}.")
REPLACED = M_("An attachment was removed: {reason}.")
REPLACED_LINE = M_("\"{filename}\": {notice}")
CUT = M_("[a file was removed here by the attachment gateway]")
NOT_STORED = M_("The attachment \"{filename}\" could not be stored and was too large to forward.\n"
                "Please ask the customer to send it again.\n")
OFFLOADED = M_("The attachment \"{filename}\" ({size}) was moved to secure storage.\n"
               "Use the secure attachment link in this message to download it.\n")
OFFLOADED_CLEANED = M_("The attachment \"{filename}\" ({size}) was moved to secure storage after it was cleaned "
                       "({cleaned}).\nUse the secure attachment link in this message to download it.\n")
CLEANED = M_("The attachment \"{filename}\" was cleaned: {summary}. The original is kept for an administrator.")
WHOLE_MESSAGE = M_("This message could not be examined by the attachment gateway ({reason}), so its content "
                   "was withheld and kept for an administrator.\nThe customer has been told.\n")

# Reasons the gateway gives itself (the policies give theirs: policies/*.py).
UNEXAMINED = M_("it could not be examined ({why})")
OUT_OF_TIME = M_("the time for examining one message ran out")
DISARM_TOO_LARGE = M_("it is too large to be checked for active content ({size} bytes, the limit is {limit})")
DISARM_FAILED = M_("it could not be checked for active content ({detail})")
DISARM_ACTIVE = M_("it carries active content ({summary})")

# What disarming removes (gateway/disarm/pdf.py and ooxml.py, their words).
DISARM_WORDS = (
    M_("scripts"), M_("program launches"), M_("data imports"), M_("form submissions"),
    M_("links that open other files"), M_("web links"), M_("embedded media"),
    M_("macros"), M_("a remote template"), M_("linked objects"), M_("remote content"),
    M_("links to other workbooks"), M_("DDE links"), M_("DDE fields"), M_("ActiveX controls"),
)
EMBEDDED_FILES = MN_("{count} embedded file", "{count} embedded files")
REMOVED_WORDS = M_("{things} removed")
ACTIVE_CONTENT_REMOVED = M_("active content removed")
ACTIVE_CONTENT = M_("active content")
AND = M_("{first} and {last}")

UNKNOWN_TYPE = M_("an unknown type")
FILE_OF_TYPE = M_("a file of type {type}")

MEGABYTES = M_("{number} MB")
KILOBYTES = M_("{number} KB")
BYTES = MN_("{count} byte", "{count} bytes")

# The email the upload page sends the contact centre (gateway/http/upload_page.py).
UPLOAD_PAGE_SENDER = M_("Customer upload page")
UPLOADED_SUBJECT = M_("Files uploaded by customer {customer}")
UPLOADED = M_("The customer {customer} uploaded a file through the upload page.")

# The automatic reply.
AUTOREPLY_SUBJECT = M_("Your attachment could not be accepted")
AUTOREPLY = M_("""Hello,

Thank you for your message "{subject}". We could not accept the following
attachment(s):

{refusals}

Please send the file again as a PDF, an image (JPEG, PNG, GIF, TIFF, HEIC),
a text or CSV file, or a Word, Excel or PowerPoint document.
Files too large for email can be sent on our secure upload page: {upload_url}

This is an automatic reply; there is no need to answer it.
""")
STORAGE_FAILED_SUBJECT = M_("We could not store your attachment")
STORAGE_FAILED = M_("""Hello,

Thank you for your message "{subject}". It has reached us, but we could not
store the following file(s), and they were too large to pass on with it:

{files}

This was a problem on our side, not with your file. Please send the file(s)
again, or use our upload page:

  {upload_url}

This is an automatic reply; there is no need to answer it.
""")
STORAGE_FAILED_NO_PAGE = M_("""Hello,

Thank you for your message "{subject}". It has reached us, but we could not
store the following file(s), and they were too large to pass on with it:

{files}

This was a problem on our side, not with your file. Please send the file(s)
again.

This is an automatic reply; there is no need to answer it.
""")
STORAGE_FAILED_REASON = M_("we could not store this file (a problem on our side); please send it again")

# Delivery reports (gateway/delivery/dsn.py): the part a person reads.
DSN_HOST = M_("This is the mail system at host {hostname}.")
DSN_FAILED = M_("Your message could not be delivered to one or more recipients.")
DSN_DELAYED = M_("Your message could not be delivered yet to one or more recipients.")
DSN_RETRY_UNTIL = M_("It will be retried until {date}; you do not need to send it again.")
DSN_RETRY = M_("It will be retried; you do not need to send it again.")
DSN_FAILED_SUBJECT = M_("Undelivered Mail Returned to Sender")
DSN_DELAYED_SUBJECT = M_("Delayed Mail (still being retried)")

#: The fields each route template may use.
LINK_FIELDS = ("filename", "size")
LANDING_FIELDS = ("count", "size")


class MailTexts:
    """The mail texts in one language: ``text`` and ``plural`` translate and
    fill a message; the other methods are the sentences the pipeline needs."""

    def __init__(self, translations: gettext.NullTranslations, language: str = i18n.DEFAULT) -> None:
        self.t = translations
        self.language = language

    def text(self, message: str, **values: object) -> str:
        """``message`` translated (English when the catalogue lacks it) and filled."""
        return fill(self.t.gettext(message) if message else message, **values)

    def template(self, message: str) -> str:
        """``message`` translated, not filled: a template filled by its user."""
        return self.t.gettext(message)

    def plural(self, forms: tuple[str, str], n: int, **values: object) -> str:
        """The form of ``forms`` for ``n`` in this language, filled (``{count}`` is ``n``)."""
        return fill(self.t.ngettext(forms[0], forms[1], n), count=n, **values)

    # -- pieces -----------------------------------------------------------

    def size(self, n: int) -> str:
        """A size as agents read it: ``12.0 MB`` (binary megabytes), ``100 KB``;
        the decimal mark is the language's."""
        if n >= 1 << 20:
            return self.text(MEGABYTES, number=self._decimal(n / (1 << 20), "0.0"))
        if n >= 1 << 10:
            return self.text(KILOBYTES, number=self._decimal(n / (1 << 10), "0"))
        return self.plural(BYTES, n)

    def _decimal(self, x: float, pattern: str) -> str:
        try:
            return str(format_decimal(x, format=pattern, locale=self.language))
        except Exception:  # noqa: BLE001 - a language Babel does not know: the English form
            return f"{x:.1f}" if pattern == "0.0" else f"{x:.0f}"

    def type_words(self, ctype: str | None) -> str:
        """A MIME type in words ("a PDF document"), in this language."""
        if not ctype:
            return self.text(UNKNOWN_TYPE)
        known = filetypes.TYPE_NAMES.get(ctype)
        return self.text(known) if known is not None else self.text(FILE_OF_TYPE, type=ctype)

    def value(self, v: Any) -> str:
        """A reason's field as this language shows it."""
        if isinstance(v, TypeName):
            return self.type_words(v)
        if isinstance(v, Phrase):
            return self.text(v)
        if isinstance(v, tuple):
            return self.removed_things(v)
        return str(v)

    def reason(self, decision: policies.Decision) -> str:
        """Why a policy decided, for the notice and the reply."""
        if not decision.message:
            return decision.reason
        return self.text(decision.message, **{k: self.value(v) for k, v in decision.fields.items()})

    def disarmed(self, removed: Sequence[str]) -> str:
        """What disarming took out, "scripts and 1 embedded file removed"."""
        return self.text(REMOVED_WORDS, things=self.removed_things(removed)) if removed \
            else self.text(ACTIVE_CONTENT_REMOVED)

    def removed_things(self, removed: Sequence[str]) -> str:
        """Phrases of ours as one list, "a, b and c": what disarming took
        out, without "removed" ("1 embedded file" counted in the language)."""
        said = []
        for word in removed:
            m = re.fullmatch(r"(\d+) embedded files?", word)
            said.append(self.plural(EMBEDDED_FILES, int(m.group(1))) if m else self.text(word))
        if len(said) <= 1:
            return "".join(said)
        return self.text(AND, first=", ".join(said[:-1]), last=said[-1])

    # -- sentences --------------------------------------------------------

    def link_label(self, template: str | None, filename: str, size: int) -> str:
        """A link's text: the route's template when it sets one, else the
        catalogue's; ``filename`` as it is to be shown."""
        return fill(template if template is not None else self.t.gettext(LINK_LABEL),
                    filename=filename, size=self.size(size))

    def landing_label(self, template: str | None, count: int, size: int) -> str:
        """The landing page link's text (``{count}`` files, ``{size}`` in all)."""
        if template is not None:
            return fill(template, count=count, size=self.size(size))
        return self.plural(LANDING_LABEL, count, size=self.size(size))


def for_language(catalogues: i18n.Catalogues, language: str) -> MailTexts:
    """The mail texts of ``language`` from ``catalogues``."""
    return MailTexts(catalogues.translations(language, "mail"), i18n.normalise(language) or i18n.DEFAULT)


def catalogues(directory: str | Path | None) -> i18n.Catalogues:
    """The catalogues with an operator's directory (``[i18n] directory``) first."""
    return i18n.Catalogues(Path(directory) if directory else None)


def catalogue_errors(path: Path) -> list[str]:
    """What is wrong in one ``mail.po``: a translation using a field its
    message does not have, or a file Babel cannot read."""
    from babel.messages.pofile import read_po

    try:
        with path.open("rb") as f:
            catalog = read_po(f, abort_invalid=True)
    except Exception as e:  # noqa: BLE001 - any parse failure is a config error naming the file
        return [f"{path}: not a readable catalogue ({e})"]
    errors = []
    for msg in catalog:
        if not msg.id:
            continue
        ids = msg.id if isinstance(msg.id, (tuple, list)) else (msg.id,)
        strs = msg.string if isinstance(msg.string, (tuple, list)) else (msg.string,)
        allowed: set[str] = set()
        for i in ids:
            allowed |= template_fields(i)
        if isinstance(msg.id, (tuple, list)):
            allowed.add("count")
        for s in strs:
            if s:
                errors += [f"{path}: message {ids[0]!r}: {e}" for e in template_errors(s, allowed)]
    return errors


def operator_catalogues(directory: Path) -> list[Path]:
    """The ``mail.po`` files of an operator's directory."""
    return sorted(directory.glob("*/LC_MESSAGES/mail.po"))


def mail_languages(cat: i18n.Catalogues) -> tuple[str, ...]:
    """The languages with a mail catalogue (English, the message ids, always)."""
    dirs = [d for d in (cat.override, i18n.SHIPPED) if d is not None]
    return tuple(lang for lang in cat.languages()
                 if lang == i18n.DEFAULT or any((d / lang / "LC_MESSAGES" / "mail.po").is_file() for d in dirs))
