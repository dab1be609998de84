"""A TLS-terminating TCP proxy for the Kafka TLS test: accepts TLS on 127.0.0.1:LISTEN with
CERT/KEY and forwards the plaintext to 127.0.0.1:TARGET (a broker that speaks no TLS itself).

    python3 tests/tls_proxy.py LISTEN TARGET CERT KEY
"""
import asyncio
import ssl
import sys

listen, target, cert, key = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)


async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except Exception:
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def handle(client_r, client_w):
    try:
        broker_r, broker_w = await asyncio.open_connection("127.0.0.1", target)
    except Exception:
        client_w.close()
        return
    await asyncio.gather(pipe(client_r, broker_w), pipe(broker_r, client_w))


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", listen, ssl=ctx)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


asyncio.run(main())
