"""The gateway's directory pages: a JSON document for programs, HTML for people.

``listing()`` describes one directory of a snapshot; ``render_html()`` turns
that description into a page. Every name comes from a manifest someone else
wrote, so in the page every name is HTML-escaped, and in a link every name is
percent-encoded as one path segment (``<script>``, quotes, ``?``, ``#``, ``%``
and unicode all survive the round trip). Links are relative, so the pages work
behind a reverse proxy that mounts the gateway under a prefix.

The page is plain HTML and CSS; one small script (allowed by its hash in the
Content-Security-Policy, nothing else may run) makes the copy buttons work.
"""

import base64
import hashlib
import html
from urllib.parse import quote

from kachery_core.settings import format_size as human_size
from kachery_core.urls import HashURL

def file_url(name, entry):
    """The hash URL of a snapshot file entry (sha1 preferred; a large file's
    manifest kept, so it can be read chunk by chunk wherever it is pasted)."""
    if entry.sha1:
        return str(HashURL("sha1", entry.sha1, name, "", entry.manifest))
    return str(HashURL("md5", entry.md5, name))


def listing(snapshot, node, snapshot_totals):
    """The JSON-able description of directory ``node`` of ``snapshot``.

    ``snapshot`` is the HashURL of this directory (its path says where it is),
    ``snapshot_totals`` the (file count, bytes) of the whole snapshot.
    """
    files, total = node.count()
    entries = []
    for name in sorted(node.dirs):
        sub = node.dirs[name]
        sub_files, sub_total = sub.count()
        entries.append({"name": name, "type": "directory", "url": str(snapshot.child(name)),
                        "file_count": sub_files, "size": sub_total})
    for name in sorted(node.files):
        entry = node.files[name]
        item = {"name": name, "type": "file", "url": file_url(name, entry), "size": entry.size}
        for key in ("sha1", "md5", "manifest"):
            if getattr(entry, key):
                item[key] = getattr(entry, key)
        entries.append(item)
    root = HashURL("sha1dir", snapshot.hash, snapshot.name)
    return {
        "url": str(snapshot),
        "snapshot": str(root),
        "path": snapshot.path,
        "file_count": files,
        "size": total,
        "snapshot_file_count": snapshot_totals[0],
        "snapshot_size": snapshot_totals[1],
        "entries": entries,
    }


COPY_SCRIPT = """
function copyByCommand(text) {
  var field = document.createElement("textarea");
  field.value = text;
  document.body.appendChild(field);
  field.select();
  var copied = document.execCommand("copy");
  field.remove();
  return copied;
}
document.addEventListener("click", function (event) {
  var button = event.target.closest("button.copy");
  if (!button) return;
  var text = button.getAttribute("data-url");
  function show(label) {
    button.textContent = label;
    setTimeout(function () { button.textContent = "copy"; }, 1500);
  }
  function fallback() { show(copyByCommand(text) ? "copied" : "select and copy"); }
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(text).then(function () { show("copied"); }, fallback);
  } else {
    fallback();
  }
});
"""
_SCRIPT_HASH = base64.b64encode(hashlib.sha256(COPY_SCRIPT.encode()).digest()).decode()
#: Pages load nothing from elsewhere and run only the copy script.
CONTENT_SECURITY_POLICY = (f"default-src 'none'; style-src 'unsafe-inline'; "
                           f"script-src 'sha256-{_SCRIPT_HASH}'; img-src data:; "
                           f"base-uri 'none'; form-action 'none'")

STYLE = """
:root { color-scheme: light dark; --muted: #6a737d; --line: #d0d7de55; }
body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; padding: 1em; max-width: 72em; }
nav { font-size: 1.1em; overflow-wrap: anywhere; }
nav a { text-decoration: none; }
.summary { color: var(--muted); margin: .3em 0 1em; }
code { font: 12px/1.3 ui-monospace, monospace; overflow-wrap: anywhere; }
table { border-collapse: collapse; width: 100%; }
td { border-top: 1px solid var(--line); padding: .35em .5em .35em 0; vertical-align: top; }
td.size { white-space: nowrap; text-align: right; color: var(--muted); }
td.name { overflow-wrap: anywhere; }
.url { display: block; color: var(--muted); }
button.copy { font-size: 11px; padding: 0 .4em; margin-left: .3em; }
@media (max-width: 40em) { td.size { font-size: .85em; } code { font-size: 11px; } }
"""


def render_html(document):
    """The HTML page of a ``listing()`` document."""
    parts = [part for part in document["path"].split("/") if part]
    title = document["url"]
    up = "../" * (2 + len(parts))  # from this page back to the gateway's root
    rows = [_row(entry, up) for entry in document["entries"]]
    if parts:
        rows.insert(0, '<tr><td class="name"><a href="../">../</a></td><td class="size"></td></tr>')
    summary = f"{_count(document['file_count'])}, {human_size(document['size'])}"
    if parts:
        summary += (f" in this folder &middot; snapshot: {_count(document['snapshot_file_count'])}, "
                    f"{human_size(document['snapshot_size'])}")
    return "".join([
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<nav>{_breadcrumb(document, parts)}</nav>",
        f'<p class="summary">{summary} &middot; <code>{_escape(title)}</code>',
        f'{_copy_button(title)}</p>',
        "<table>", "\n".join(rows), "</table>",
        f"<script>{COPY_SCRIPT}</script></body></html>\n",
    ])


def _breadcrumb(document, parts):
    """snapshot-label / a / b, each linking to its level (relative links)."""
    root_name = document["snapshot"].removeprefix("sha1dir://")
    depth = len(parts)
    crumbs = [(root_name, "../" * depth or "./")]
    for index, part in enumerate(parts):
        crumbs.append((part, "../" * (depth - index - 1) or "./"))
    links = [f'<a href="{href}">{_escape(name)}</a>' for name, href in crumbs[:-1]]
    links.append(f"<strong>{_escape(crumbs[-1][0])}</strong>")
    return " / ".join(links)


def _row(entry, up):
    name = entry["name"]
    segment = quote(name, safe="")
    if entry["type"] == "directory":
        link = f'<a href="{segment}/">{_escape(name)}/</a>'
        size = f"{human_size(entry['size'])} &middot; {_count(entry['file_count'])}"
    else:
        link = f'<a href="{segment}">{_escape(name)}</a>'
        link += f' <a class="download" href="{_escape(_download_href(entry, up))}" download>download</a>'
        size = human_size(entry["size"])
    url = entry["url"]
    return (f'<tr><td class="name">{link}<span class="url"><code>{_escape(url)}</code>'
            f'{_copy_button(url)}</span></td><td class="size">{size}</td></tr>')


def _download_href(entry, up):
    """``sha1/<h>/<name>`` (or md5/) from the gateway's root, which ``up`` reaches."""
    segment = quote(entry["name"], safe="")
    if "sha1" in entry:
        query = f"?manifest={entry['manifest']}" if "manifest" in entry else ""
        return f"{up}sha1/{entry['sha1']}/{segment}{query}"
    return f"{up}md5/{entry['md5']}/{segment}"


def _copy_button(url):
    return f'<button type="button" class="copy" data-url="{_escape(url)}">copy</button>'


def _count(files):
    return f"{files} file" + ("" if files == 1 else "s")


def _escape(text):
    return html.escape(text, quote=True)
