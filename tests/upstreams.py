"""An API upstream for the BFF proxy's smuggling tests, written on a raw socket because it must behave as no library
server would let it: HTTP/1.1 with keep-alive, it reads the body of a POST, PUT or PATCH by its Content-Length and
leaves the body of any other method unread on the connection (where it is read as the next request, as Tomcat-like
servers do with a GET's body), and it keeps the connection open whatever the request's `Connection` header says.

`POST <any>/notes` keeps its body as a note (a comment, an upload: anything a user can read back), `GET <any>/notes`
lists the notes, and anything else is answered 200 with the method, path and connection number it arrived with.
Every request is recorded: method, path, headers, the length of its head, its connection's number."""

import json
import re
import socket
import threading
import time

REQUEST_LINE = re.compile(rb"([A-Z]+) (\S+) HTTP/1\.[01]")
BODIES_READ = frozenset({b"POST", b"PUT", b"PATCH"})


class KeepAliveUpstream:
    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.received, self.notes = [], []
        self._lock = threading.Lock()
        self._connections = {}  # number -> [socket, bytes waiting on it]
        self._count = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                self._count += 1
                number = self._count
                self._connections[number] = [connection, b""]
            threading.Thread(target=self._serve, args=(number, connection), daemon=True).start()

    def _waiting(self, number, data):
        with self._lock:
            self._connections[number][1] = data

    def _serve(self, number, connection):
        buffer = b""
        try:
            while True:
                buffer = buffer.lstrip(b"\r\n")  # empty lines before a request are ignored (RFC 9112 2.2)
                self._waiting(number, buffer)
                while b"\r\n\r\n" not in buffer:
                    data = connection.recv(65536)
                    if not data:
                        return
                    buffer += data
                    self._waiting(number, buffer)
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                matched = REQUEST_LINE.fullmatch(lines[0])
                if not matched:
                    return  # not a request: the connection is closed unanswered
                method, target = matched.groups()
                headers = {}
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    headers[name.strip().decode("latin-1")] = value.strip().decode("latin-1")
                body = b""
                if method in BODIES_READ:
                    length = int(next((v for k, v in headers.items() if k.lower() == "content-length"), "0"))
                    while len(buffer) < length:
                        data = connection.recv(65536)
                        if not data:
                            return  # the body never came: nothing is done with the request
                        buffer += data
                    body, buffer = buffer[:length], buffer[length:]
                self._answer(connection, number, method.decode(), target.decode("latin-1"), headers, body,
                             len(head) + 4)
        except OSError:
            pass
        finally:
            with self._lock:
                self._connections.pop(number, None)
            connection.close()

    def _answer(self, connection, number, method, path, headers, body, head_length):
        with self._lock:
            self.received.append({"connection": number, "method": method, "path": path, "headers": headers,
                                  "head_length": head_length})
            if method == "POST" and path.endswith("/notes"):
                self.notes.append(body.decode("latin-1"))
                status, answer = 201, {"stored": len(self.notes)}
            elif method == "GET" and path.endswith("/notes"):
                status, answer = 200, {"notes": list(self.notes)}
            else:
                status, answer = 200, {"method": method, "path": path, "connection": number}
        out = json.dumps(answer).encode()
        head = (f"HTTP/1.1 {status} {'Created' if status == 201 else 'OK'}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(out)}\r\n\r\n").encode()
        connection.sendall(head + (b"" if method == "HEAD" else out))

    def idle(self, timeout=10):
        """Wait until no connection holds part of a request (a cut-off body, a head without its end); whether it
        came to that."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not any(waiting for _, waiting in self._connections.values()):
                    return True
            time.sleep(0.02)
        return False

    def stop(self):
        self.listener.close()
        with self._lock:
            connections = [connection for connection, _ in self._connections.values()]
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
