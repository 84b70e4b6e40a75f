"""Opens <count> TCP connections to <host>:<port> and keeps them idle until killed.
Prints "open <n>" once all are established (or "failed <n> <error>").
Usage: python3 hold_client.py <host> <port> <count>"""
import asyncio, resource, sys

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

async def main():
    conns = []
    sem = asyncio.Semaphore(256)
    async def one():
        async with sem:
            conns.append(await asyncio.wait_for(asyncio.open_connection(host, port), 30))
    try:
        await asyncio.gather(*(one() for _ in range(count)))
    except Exception as e:
        print("failed %d %r" % (len(conns), e), flush=True)
        return
    # An echo-free check that the path is really up: the peer has not closed any of them.
    print("open %d" % len(conns), flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
