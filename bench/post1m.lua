-- wrk script: POST a 1 MiB body (wrk adds Content-Length) to the echo app.
wrk.method = "POST"
wrk.body = string.rep("x", 1048576)
wrk.headers["Content-Type"] = "application/octet-stream"
