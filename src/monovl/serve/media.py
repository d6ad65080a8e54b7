"""Image URLs from requests, safe by default.

- `data:image/...;base64,...` is always accepted (decoded strictly: bad base64 is an error).
- `http(s)://` is refused unless `allow_remote` is set. Even then the host is resolved first and
  every address it resolves to must be a public unicast address (no loopback, link-local such as
  the 169.254.169.254 cloud metadata service, private, shared, multicast or reserved ranges); the
  connection then goes to the address that was checked, so a second DNS answer cannot swap in an
  internal one (DNS rebinding). Redirects are not followed.
- `file:` URLs and plain paths are refused unless `allowed_local_path` is set, and then only for
  regular files whose real path (symlinks resolved) lies under it.

Every image is size-checked twice before it is decoded: its encoded bytes (`max_image_bytes`) and
the pixel count its header declares (`max_image_pixels`), so a decompression bomb (a small PNG that
claims 30000x30000 pixels) is refused before Pillow allocates anything. Only the formats in
`formats` are opened. All refusals raise `MediaError`, a ValueError whose message the server
returns as a 400.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import io
import ipaddress
import socket
import ssl
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ..processing.image import ImageLoadError, open_image


class MediaError(ValueError):
    """An image URL the server refuses or cannot read; the message says which rule and why."""


@dataclass(frozen=True)
class MediaPolicy:
    allow_remote: bool = False
    allowed_local_path: Path | None = None
    max_image_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 40_000_000  # about 6300 x 6300; Pillow's own bomb limit is 179M
    formats: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
    fetch_timeout: float = 10.0

    def load(self, url: str) -> Image.Image:
        """The decoded image at `url` (a PIL image in its stored mode); MediaError when refused."""
        if not isinstance(url, str) or not url:
            raise MediaError("image_url.url must be a non-empty string")
        scheme = urllib.parse.urlsplit(url).scheme.lower() if ":" in url[:16] else ""
        if scheme == "data":
            data = self._data_url(url)
        elif scheme in ("http", "https"):
            data = self._remote(url)
        elif scheme == "file" or scheme == "":
            data = self._local(url)
        else:
            raise MediaError(f"unsupported image URL scheme {scheme!r}: use a data: URL"
                             + (", http(s)" if self.allow_remote else "")
                             + (" or a file: URL" if self.allowed_local_path else ""))
        return self.decode(data)

    # ---- sources ---------------------------------------------------------------------------------

    def _data_url(self, url: str) -> bytes:
        header, sep, payload = url[5:].partition(",")
        if not sep:
            raise MediaError("malformed data: URL (no comma before the data)")
        parts = header.split(";")
        mime = parts[0].strip().lower()
        if mime and not mime.startswith("image/"):
            raise MediaError(f"data: URL has media type {mime!r}; expected image/*")
        if "base64" not in (p.strip().lower() for p in parts[1:]):
            raise MediaError("data: URL images must be base64-encoded (data:image/png;base64,...)")
        if len(payload) > self.max_image_bytes * 4 // 3 + 4:
            raise MediaError(f"image data is larger than the limit of {self.max_image_bytes} bytes")
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise MediaError(f"data: URL holds invalid base64 ({exc})") from None

    def _local(self, url: str) -> bytes:
        if self.allowed_local_path is None:
            raise MediaError("local files (file: URLs and paths) are refused: the server was not started "
                             "with --allowed-local-media-path")
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme.lower() == "file":
            if parsed.netloc not in ("", "localhost"):
                raise MediaError(f"file: URL with a remote host {parsed.netloc!r} is refused")
            raw = urllib.parse.unquote(parsed.path)
        else:
            raw = url
        path = Path(raw)
        if not path.is_absolute():
            raise MediaError(f"local image paths must be absolute, got {raw!r}")
        root = self.allowed_local_path.resolve()
        try:
            real = path.resolve(strict=True)
        except (OSError, RuntimeError):
            raise MediaError(f"no readable file at {raw!r} under the allowed media path") from None
        # The real path decides, so a symlink inside the folder cannot point outside it.
        if not real.is_relative_to(root):
            raise MediaError(f"{raw!r} is outside the allowed media path")
        if not real.is_file():
            raise MediaError(f"{raw!r} is not a regular file")
        if real.stat().st_size > self.max_image_bytes:
            raise MediaError(f"{raw!r} is larger than the limit of {self.max_image_bytes} bytes")
        with open(real, "rb") as f:
            return f.read(self.max_image_bytes + 1)

    def _remote(self, url: str) -> bytes:
        if not self.allow_remote:
            raise MediaError("http(s) image URLs are refused: the server was not started with "
                             "--allow-remote-media; send the image as a data: URL")
        parsed = urllib.parse.urlsplit(url)
        host, https = parsed.hostname, parsed.scheme.lower() == "https"
        if not host:
            raise MediaError("image URL has no host")
        try:
            port = parsed.port or (443 if https else 80)
        except ValueError:
            raise MediaError("image URL has an invalid port") from None
        ip = resolve_public(host, port)
        target = (parsed.path or "/") + (f"?{parsed.query}" if parsed.query else "")
        conn = (_PinnedHTTPS(host, ip, port, self.fetch_timeout) if https
                else _PinnedHTTP(host, ip, port, self.fetch_timeout))
        try:
            conn.request("GET", target, headers={"User-Agent": "monovl-serve", "Accept": "image/*"})
            resp = conn.getresponse()
            if resp.status != 200:
                raise MediaError(f"fetching the image gave HTTP {resp.status} (redirects are not followed)")
            length = resp.getheader("Content-Length")
            if length and length.isdigit() and int(length) > self.max_image_bytes:
                raise MediaError(f"the remote image is larger than the limit of {self.max_image_bytes} bytes")
            data = resp.read(self.max_image_bytes + 1)
        except (OSError, http.client.HTTPException) as exc:
            raise MediaError(f"cannot fetch the image ({type(exc).__name__}: {exc})") from None
        finally:
            conn.close()
        if len(data) > self.max_image_bytes:
            raise MediaError(f"the remote image is larger than the limit of {self.max_image_bytes} bytes")
        return data

    # ---- decoding --------------------------------------------------------------------------------

    def decode(self, data: bytes) -> Image.Image:
        """Open encoded image bytes after the size, format and pixel-count checks."""
        if len(data) > self.max_image_bytes:
            raise MediaError(f"image data is larger than the limit of {self.max_image_bytes} bytes")
        if not data:
            raise MediaError("the image data is empty")
        try:
            # Image.open reads the header only: size and format are known before any pixel is decoded.
            header = Image.open(io.BytesIO(data), formats=list(self.formats))
        except UnidentifiedImageError:
            raise MediaError(f"unsupported or unreadable image format; accepted: {', '.join(self.formats)}") from None
        except Image.DecompressionBombError as exc:
            raise MediaError(f"image has too many pixels ({exc})") from None
        except Exception as exc:  # Pillow raises many types for corrupt headers
            raise MediaError(f"unreadable image ({type(exc).__name__}: {exc})") from None
        width, height = header.size
        if width * height > self.max_image_pixels:
            raise MediaError(f"image has too many pixels: {width}x{height} = {width * height}, over the limit "
                             f"of {self.max_image_pixels}")
        try:
            return open_image(header)  # full decode, truncation and corruption checked
        except ImageLoadError as exc:
            raise MediaError(str(exc)) from None


def is_public_address(address: str) -> bool:
    """True for a globally routable unicast address; IPv4-mapped IPv6 is judged as the IPv4 inside."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not (ip.is_multicast or ip.is_loopback or ip.is_link_local or ip.is_private
                                 or ip.is_reserved or ip.is_unspecified)


def resolve_public(host: str, port: int) -> str:
    """The address to connect to for `host`: every address it resolves to must be public (one bad
    answer refuses the host, whatever the others are). MediaError otherwise."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise MediaError(f"cannot resolve image host {host!r} ({exc})") from None
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    for address in addresses:
        if not is_public_address(address):
            raise MediaError(f"image host {host!r} resolves to {address}, a loopback, private, link-local or "
                             "reserved address; the server never fetches from those")
    if not addresses:
        raise MediaError(f"image host {host!r} has no address")
    return addresses[0]


class _PinnedHTTP(http.client.HTTPConnection):
    """HTTP to an already checked address; the Host header still names the host."""

    def __init__(self, host: str, ip: str, port: int, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self._ip = ip

    def connect(self) -> None:
        self.sock = socket.create_connection((self._ip, self.port), self.timeout)


class _PinnedHTTPS(_PinnedHTTP):
    """HTTPS to an already checked address; the certificate is verified for the host name."""

    default_port = 443

    def connect(self) -> None:
        super().connect()
        self.sock = ssl.create_default_context().wrap_socket(self.sock, server_hostname=self.host)
