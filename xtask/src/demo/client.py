# xtask/src/demo/client.py
# Opens COUNT connections at once (telnet-style: connect, send "hello", read the echo), prints one
# JSON line with each connection's outcome, then with `hold` keeps the connected ones open until
# stdin closes. Usage: python3 -c "$SCRIPT" ADDR PORT COUNT TIMEOUT_SECONDS hold|close
import json
import signal
import socket
import sys
import threading
import time

signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C: exit quietly, xtask cleans up

addr, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
timeout, hold = float(sys.argv[4]), sys.argv[5] == "hold"
results = [None] * count
held = []
lock = threading.Lock()


def error_name(e):
    if isinstance(e, socket.timeout):
        return "timeout"
    if isinstance(e, ConnectionRefusedError):
        return "refused"
    if isinstance(e, ConnectionResetError):
        return "reset"
    return e.strerror or str(e)


def connect(i):
    start = time.monotonic()
    result = {"connected": False, "error": None, "echo": None}
    try:
        s = socket.create_connection((addr, port), timeout=timeout)
        result["connected"] = True
        with lock:
            held.append(s)
        s.sendall(b"hello\n")
        result["echo"] = s.recv(64).decode(errors="replace").strip()
    except OSError as e:
        result["error"] = error_name(e)
    result["ms"] = round((time.monotonic() - start) * 1000)
    results[i] = result


threads = [threading.Thread(target=connect, args=(i,)) for i in range(count)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps({"results": results}), flush=True)
if hold:
    sys.stdin.read()
for s in held:
    s.close()
