"""Accepts TCP connections and holds them open without reading or writing, for memory
benchmarks of idle connections. Usage: python3 hold_server.py <port>"""
import asyncio, resource, sys

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

async def hold(reader, writer):
    await reader.read()  # returns at EOF
    writer.close()

async def main():
    server = await asyncio.start_server(hold, "0.0.0.0", int(sys.argv[1]), backlog=4096)
    async with server:
        await server.serve_forever()

asyncio.run(main())
