"""The request body limit (GATEWAY_MAX_BODY_BYTES, Flask's MAX_CONTENT_LENGTH) for every body, however it is framed.

werkzeug refuses a Content-Length over the limit before reading anything (413). A body of no announced length
(chunked), which it reads only from a server that ends the stream itself (`wsgi.input_terminated`: gunicorn,
werkzeug's own), it reads up to the limit and then stops as if the body ended there: a longer body reached the views
cut off and was taken for the whole one. The stream here looks one byte past the limit instead: if there is one, the
answer is the same 413 as for the announced length, in every profile's shape.
"""

from flask import Request as FlaskRequest
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.utils import cached_property
from werkzeug.wsgi import LimitedStream


class BoundedStream(LimitedStream):
    """werkzeug's stream limited to a maximum, which tells a body that ends at the limit from one that goes on."""

    def __init__(self, stream, limit):
        super().__init__(stream, limit, is_max=True)
        self.over_limit = False

    def on_exhausted(self):
        """At the limit: 413 if the body goes on, at this read and every later one (the rate limits read the body
        before the view, and leave the refusal to it), else its end."""
        if not self.over_limit:
            try:
                self.over_limit = bool(self._stream.read(1))
            except (OSError, ValueError) as exc:  # the client went away, as werkzeug reads it
                self.on_disconnect(error=exc)
                return
        if self.over_limit:
            raise RequestEntityTooLarge()

    def readall(self):
        data = super().readall()  # stops at the limit without asking whether the body ends there
        if self.is_exhausted:
            self.on_exhausted()
        return data


class Request(FlaskRequest):
    """Flask's request, whose body past MAX_CONTENT_LENGTH is refused with 413 whether or not it announced its
    length."""

    @cached_property
    def stream(self):
        stream = super().stream  # werkzeug's own checks first: a Content-Length over the limit is a 413 already
        if self.max_content_length is not None and "wsgi.input_terminated" in self.environ:
            return BoundedStream(self.environ["wsgi.input"], self.max_content_length)
        return stream
