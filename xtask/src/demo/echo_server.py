# xtask/src/demo/echo_server.py
# A threaded TCP echo server (the guide's tcp-echo pod). Usage: python3 -c "$SCRIPT" ADDR PORT
import signal
import socketserver
import sys

signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C: exit quietly, xtask cleans up


class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        try:
            while True:
                data = self.request.recv(4096)
                if not data:
                    return
                self.request.sendall(data)
        except OSError:
            return


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 64


Server((sys.argv[1], int(sys.argv[2])), Echo).serve_forever()
