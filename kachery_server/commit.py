"""Group commit of verified uploads (git's ``core.fsyncMethod=batch``, server side).

Every upload that finished receiving and verifying waits here. One worker
publishes whatever has accumulated as one group: flush the temp files' data,
rename each to its object name, flush the directories so the renames are
durable, then answer every request of the group. Uploads that arrive during a
flush form the next group. A group of a few uploads is flushed file by file
(fsync), a larger one with one syncfs(2) each time: N concurrent small uploads
cost two flushes, not N fsyncs plus directory fsyncs, and an object name never
points at bytes that might not be on disk.
"""

import asyncio
import logging
import os

from kachery_core.durability import flush_paths

log = logging.getLogger("kachery.server")


class GroupCommitter:
    """Publishes (temp_path, algorithm, digest) items of one LocalStore in groups."""

    def __init__(self, store):
        self.store = store
        self._queue = []
        self._worker = None

    async def publish(self, temp_path, algorithm, digest):
        """Publish a complete, verified temp file; return True if the object is new.

        Once called, the temp file belongs to the committer: cancelling the
        caller (e.g. at shutdown) does not stop or break its group.
        """
        return (await self.publish_many([(temp_path, algorithm, digest)]))[0]

    async def publish_many(self, items):
        """publish() for several (temp_path, algorithm, digest); one bool each."""
        loop = asyncio.get_running_loop()
        futures = []
        for temp_path, algorithm, digest in items:
            futures.append(loop.create_future())
            self._queue.append((temp_path, algorithm, digest, futures[-1]))
        if futures and (self._worker is None or self._worker.done()):
            self._worker = asyncio.ensure_future(self._run())
        return await asyncio.shield(asyncio.gather(*futures))

    async def _run(self):
        while self._queue:
            group, self._queue = self._queue, []
            try:
                results = await asyncio.to_thread(self._commit, [item[:3] for item in group])
            except OSError as error:  # the flush itself failed: nobody's object is durable
                results = [error] * len(group)
            for (_, _, _, future), result in zip(group, results):
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    def _commit(self, items):
        """Flush, rename each, flush; one result (bool or exception) per item.

        flush_paths fsyncs a handful of paths one by one and takes one
        syncfs(2) for more, like the local store's WriteBatch.
        """
        flush_paths([temp_path for temp_path, _, _ in items], self.store.root)
        results = [self._rename(*item) for item in items]
        flush_paths(_directories(self.store, items), self.store.root)
        return results

    def _rename(self, temp_path, algorithm, digest):
        try:
            existed = self.store.has(algorithm, digest)
            self.store.publish(temp_path, algorithm, digest)
            return not existed
        except OSError as error:
            log.error("kachery-server: could not publish %s://%s: %s", algorithm, digest, error)
            return error


def _directories(store, items):
    """The object folders of ``items`` and the fan-out folders above them
    (a rename may have created them), deepest first, each once."""
    found = {}  # an ordered set
    for _, algorithm, digest in items:
        directory = os.path.dirname(store.object_path(algorithm, digest))
        for _ in range(4):
            found[directory] = None
            directory = os.path.dirname(directory)
    return list(found)
