# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The compiled accelerator of the vetting pass: checks the common opcodes of a frame as
`streampickle._policy.rules.Rules.check` does, in C.

`scan` walks a frame from an offset and applies, opcode by opcode, exactly what ``Rules.check``
would do to the same model (the same `streampickle._policy.model` objects, `Rules` fields and
helpers). It stops *before* any opcode it leaves to ``Rules.check``: one outside its set (a
global, a call, BUILD, STOP, FRAME...), one that runs past the frame, one whose argument does not
decode, and one that comes near a limit or would be refused. Such an opcode has changed
nothing, so the pure-Python path checks it from scratch, with its own errors and messages: the
accelerator never raises a refusal itself, and the results are the same with or without it
(tests/test_scan.py checks that on thousands of pickles). The pure-Python path is the fallback
where this module is not built, and ``STREAMPICKLE_PURE_PYTHON=1`` forces it.
"""

from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport int32_t, int64_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy
from cpython.pyport cimport PY_SSIZE_T_MAX

from . import accounts as _accounts
from . import keys as _keys
from . import model as _model
from ._nodes cimport Box, Sized

cdef object Tuple = _model.Tuple
cdef object Long = _model.Long
cdef object MISSING = _model.MISSING
cdef object NO_HOLDERS = _model.NO_HOLDERS
cdef object EMPTY_TUPLE = _model.EMPTY_TUPLE
cdef object COSTED = _model.COSTED
cdef tuple SIZES = _model._SIZES
cdef Py_ssize_t COST_CAP = _model.COST_CAP
cdef long long SMALL_INT = _keys.SMALL_INT
cdef object PLAIN_KEYS = _keys.PLAIN_KEYS
cdef object ModelledCallable = _model.ModelledCallable
cdef object EXACT_KEYS = _accounts._EXACT_KEYS
cdef object OPAQUE_KEYS = _accounts._OPAQUE_KEYS
cdef object COLLIDED = _accounts._COLLIDED
cdef object NoneType = type(None)


cdef inline object _sized(Py_ssize_t size):
    if size < 256:
        return SIZES[size]
    return Sized(size)


cdef inline uint32_t _u32(const unsigned char* p):
    return <uint32_t>p[0] | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16) | (<uint32_t>p[3] << 24)


cdef inline double _float8(const unsigned char* p):
    cdef uint64_t bits = 0
    cdef int i
    cdef double value
    for i in range(8):
        bits = (bits << 8) | p[i]
    memcpy(&value, &bits, 8)
    return value


cdef inline Py_ssize_t _add_cost(Py_ssize_t total, Py_ssize_t cost):
    """*total* + *cost*, saturating at ``COST_CAP`` (as the model's ``min(..., COST_CAP)``;
    both are at most that)."""
    return COST_CAP if cost >= COST_CAP - total else total + cost


cdef inline Box _box():
    """``Box(0)``, without the call of ``__init__``."""
    cdef Box box = Box.__new__(Box)
    box.size = 0
    box.depth = 1
    box.cost = 1
    box.holders = NO_HOLDERS
    return box


cdef inline void _add_holder(object node, object holders, object holder):
    """`nodes.add_holder`."""
    if holders is NO_HOLDERS:
        node.holders = holder
    elif type(holders) is list:
        (<list>holders).append(holder)
    else:
        node.holders = [holders, holder]


cdef object _contain(object rules, object target, list items, Py_ssize_t max_nesting,
                     Py_ssize_t end):
    """`Accounts.contain` of *items* in *target* (a `Box` or a `Tuple`), *end* the stream
    offset of the opcode's end; the walk up the holders is left to `Accounts.deepen`."""
    cdef Py_ssize_t cost = 0
    cdef Py_ssize_t deepest = 0
    cdef Py_ssize_t depth
    cdef bint live = False
    cdef object holders
    cdef Box box
    cdef type kind
    for item in items:
        kind = type(item)
        if kind is Box:
            box = <Box>item
            cost = _add_cost(cost, box.cost)
            depth = box.depth
            holders = box.holders  # never None: a container can always deepen
            if holders is NO_HOLDERS:
                box.holders = target  # its one holder (`nodes.add_holder`)
            else:
                _add_holder(item, holders, target)
            live = True
            if depth > deepest:
                deepest = depth
            continue
        elif (kind is int or kind is Sized or kind is str or kind is float or kind is bool
                or item is None or kind not in COSTED):
            cost = _add_cost(cost, 1)
            continue
        else:
            cost = _add_cost(cost, item.cost)
            if kind is Long:
                continue
            depth = item.depth
            holders = item.holders
            if holders is not None:
                _add_holder(item, holders, target)
                live = True
            if depth > deepest:
                deepest = depth
    if type(target) is Box:
        box = <Box>target
        box.cost = _add_cost(box.cost, cost)
        depth, holders = box.depth, box.holders
    else:
        target.cost = _add_cost(target.cost, cost)
        if live and target.holders is None:
            target.holders = NO_HOLDERS
        depth, holders = target.depth, target.holders
    if deepest < depth:
        return
    if not holders and deepest < max_nesting:  # all that `Accounts.deepen` does then:
        if type(target) is Box:
            box.depth = deepest + 1
        else:
            target.depth = deepest + 1
        return
    rules.end = end  # `Accounts.charge_work` sizes the work by the bytes received
    rules.deepen(target, deepest + 1)


cdef Py_ssize_t _collidable(list items):
    """`keys.collidable`: how many of *items* are not plain keys (str, bytes, None, bools,
    ints that hash to themselves: `Accounts.hash` does nothing for those)."""
    cdef type kind
    cdef Py_ssize_t count = 0
    cdef long long value
    cdef int overflow
    for key in items:
        kind = type(key)
        if kind is str or kind is Sized or kind is bool or key is None:
            continue
        if kind is int:
            value = PyLong_AsLongLongAndOverflow(key, &overflow)
            if not overflow and -SMALL_INT < value < SMALL_INT:
                continue
        elif kind is float or kind is Box or kind is Tuple:
            pass  # the common ones, not plain: no set lookup
        elif kind in PLAIN_KEYS:
            continue
        count += 1
    return count


cdef int LOOSE_CAP = _keys.LOOSE_CAP


cdef inline void _add_loose(Box box, Py_ssize_t count):
    """`keys.add_loose`."""
    box.loose = LOOSE_CAP if count > LOOSE_CAP - box.loose else box.loose + count


cdef inline bint _plain_keys(list keys):
    return _collidable(keys) == 0


cdef bint _count_hashes(dict seen, list items):
    """`Accounts.hash` of *items* into the census *seen* of a list made for a call that hashes
    them (``charge=False``: nothing is charged), where every item is a number or plain; False,
    having done nothing, where one is not (a tuple, a big int...: left to `Rules.check`)."""
    cdef type kind
    cdef Py_ssize_t same, collided = 0
    cdef long long value
    cdef int overflow
    for item in items:
        kind = type(item)
        if not (kind is int or kind is float or kind is str or kind is Sized or kind is bool
                or item is None or kind in PLAIN_KEYS):
            return False
    opaque = seen.get(OPAQUE_KEYS, 0)
    for item in items:
        kind = type(item)
        if kind is int:
            value = PyLong_AsLongLongAndOverflow(item, &overflow)
            if not overflow and -SMALL_INT < value < SMALL_INT:
                continue  # its own hash: plain
        elif kind is not float or item != item:
            continue  # plain, or a NaN (which never compares equal)
        key = hash(item)
        same = seen.get(key, 0)
        seen[key] = same + 1
        seen[EXACT_KEYS] = seen.get(EXACT_KEYS, 0) + 1
        collided += same + opaque
    if collided:
        seen[COLLIDED] = min(seen.get(COLLIDED, 0) + collided, COST_CAP)
    return True


cdef inline bint _counted(list stack):
    """Whether a list pushed now keeps a census of its members' hashes: it is made for a
    call that hashes them (`rules._census_for`)."""
    if not stack:
        return False
    func = stack[len(stack) - 1]
    return type(func) is ModelledCallable and func.hashes and not func.pairs


cdef inline Py_ssize_t _payload(const unsigned char* data, Py_ssize_t pos, Py_ssize_t size,
                                bint wide, Py_ssize_t max_payload, Py_ssize_t* length):
    """Where the payload of the length-prefixed opcode at *pos* starts (its length, of 4 bytes
    if *wide* else 1, in *length*), or -1 if it runs past *size* or exceeds *max_payload*."""
    cdef Py_ssize_t start = pos + (5 if wide else 2)
    if start > size:
        return -1
    length[0] = _u32(data + pos + 1) if wide else data[pos + 1]
    if start + length[0] > size or (max_payload >= 0 and length[0] > max_payload):
        return -1
    return start


cdef inline Py_ssize_t _index(const unsigned char* data, Py_ssize_t pos, Py_ssize_t size,
                              bint wide, Py_ssize_t* end):
    """The memo index of the PUT/GET opcode at *pos* (of 4 bytes if *wide* else 1; where the
    opcode ends in *end*), or -1 if it runs past *size*."""
    end[0] = pos + (5 if wide else 2)
    if end[0] > size:
        return -1
    return _u32(data + pos + 1) if wide else data[pos + 1]


cdef Py_ssize_t _limit(object limit):
    """A limit as a C size: -1 for none (or one no C size reaches)."""
    if limit is None or limit >= PY_SSIZE_T_MAX:
        return -1
    return limit


def scan(object rules, bytes frame, Py_ssize_t frame_start, Py_ssize_t position,
         Py_ssize_t budget):
    """Check at most *budget* opcodes of *frame* (at stream offset *frame_start*) from frame
    offset *position* with *rules*; return ``(offset reached, opcodes checked)``."""
    cdef const unsigned char* data = frame
    cdef Py_ssize_t size = len(frame)
    cdef Py_ssize_t pos = position
    cdef Py_ssize_t done = 0
    cdef Py_ssize_t end, length, mark, below, keep, index, count
    cdef uint64_t bits
    cdef unsigned char code
    cdef list stack = rules.stack
    cdef list marks = rules.marks
    cdef object memo = rules.memo
    cdef object kept = rules.kept
    cdef list values = memo.values
    cdef object limits = rules.limits
    cdef Py_ssize_t opcodes = rules.opcodes
    cdef Py_ssize_t max_opcodes = rules.max_opcodes
    cdef Py_ssize_t max_depth = rules.max_stack_depth
    cdef Py_ssize_t max_payload = _limit(limits.max_payload_size)
    cdef Py_ssize_t max_memo = _limit(limits.max_memo_size)
    cdef Py_ssize_t max_nesting = rules.max_nesting
    # Kept in C while the scan runs, written back when it stops (also on an error).
    cdef Py_ssize_t fence = rules.fence
    cdef Py_ssize_t memo_writes = rules.memo_writes
    cdef Py_ssize_t memo_count = memo.count
    cdef object value, text
    cdef Box target
    cdef list items
    try:
        while done < budget and pos < size:
            if opcodes >= max_opcodes or len(stack) + len(marks) >= max_depth:
                break
            code = data[pos]
            # -- pushes -----------------------------------------------------------------
            if code == 0x4b:  # BININT1
                if pos + 2 > size:
                    break
                stack.append(<long>data[pos + 1])
                end = pos + 2
            elif code == 0x4d:  # BININT2
                if pos + 3 > size:
                    break
                stack.append(<long>(data[pos + 1] | (<uint16_t>data[pos + 2] << 8)))
                end = pos + 3
            elif code == 0x4a:  # BININT
                if pos + 5 > size:
                    break
                stack.append(<long><int32_t>_u32(data + pos + 1))
                end = pos + 5
            elif code == 0x8a:  # LONG1 of at most 8 bytes, above -2**63 (`model.BIG`)
                length = data[pos + 1] if pos + 1 < size else 9
                if length > 8 or pos + 2 + length > size or 0 <= max_payload < length:
                    break
                bits = 0
                for index in range(length):
                    bits |= (<uint64_t>data[pos + 2 + index]) << (8 * index)
                if 0 < length < 8 and data[pos + 1 + length] & 0x80:
                    bits |= ~((<uint64_t>1 << (8 * length)) - 1)  # negative: extend the sign
                if bits == (<uint64_t>1 << 63):
                    break  # -2**63: a `Long`
                stack.append(<int64_t>bits)
                end = pos + 2 + length
            elif code == 0x47:  # BINFLOAT
                if pos + 9 > size:
                    break
                stack.append(_float8(data + pos + 1))
                end = pos + 9
            elif code == 0x4e:  # NONE
                stack.append(None)
                end = pos + 1
            elif code == 0x88:  # NEWTRUE
                stack.append(True)
                end = pos + 1
            elif code == 0x89:  # NEWFALSE
                stack.append(False)
                end = pos + 1
            elif code == 0x8c or code == 0x58:  # SHORT_BINUNICODE, BINUNICODE
                index = _payload(data, pos, size, code == 0x58, max_payload, &length)
                if index < 0:
                    break
                try:
                    text = PyUnicode_DecodeUTF8(<const char*>data + index, length, "surrogatepass")
                except UnicodeDecodeError:
                    break
                if text in kept:
                    stack.append(text)
                else:
                    stack.append(_sized(len(text)))
                end = index + length
            elif code == 0x43 or code == 0x42:  # SHORT_BINBYTES, BINBYTES
                index = _payload(data, pos, size, code == 0x42, max_payload, &length)
                if index < 0:
                    break
                stack.append(_sized(length))
                end = index + length
            elif code == 0x5d or code == 0x7d or code == 0x8f:  # EMPTY_LIST, _DICT, _SET
                target = _box()
                if code == 0x5d:
                    target.listed = True
                    if _counted(stack):
                        target.hashes = {}
                stack.append(target)
                end = pos + 1
            elif code == 0x29:  # EMPTY_TUPLE
                stack.append(EMPTY_TUPLE)
                end = pos + 1
            elif code == 0x28:  # MARK
                fence = len(stack)
                marks.append(fence)
                end = pos + 1
            # -- the memo ---------------------------------------------------------------
            elif code == 0x94 or code == 0x71 or code == 0x72:  # MEMOIZE, BINPUT, LONG_BINPUT
                if code == 0x94:
                    index = memo_count
                    end = pos + 1
                else:
                    index = _index(data, pos, size, code == 0x72, &end)
                    if index < 0:
                        break
                count = index + 1 if index + 1 > memo_writes + 1 else memo_writes + 1
                if (max_memo >= 0 and count > max_memo) or len(stack) - 1 < fence:
                    break
                memo_writes += 1
                value = stack[len(stack) - 1]
                if index < len(values):
                    if values[index] is MISSING:
                        memo_count += 1
                    values[index] = value
                elif index == len(values):
                    values.append(value)
                    memo_count += 1
                else:
                    memo.count = memo_count
                    memo.put(index, value)
                    memo_count = memo.count
            elif code == 0x68 or code == 0x6a:  # BINGET, LONG_BINGET
                index = _index(data, pos, size, code == 0x6a, &end)
                if index < 0:
                    break
                stack.append(values[index] if index < len(values) else MISSING)
            # -- containers -------------------------------------------------------------
            elif code == 0x65 or code == 0x75 or code == 0x90:  # APPENDS, SETITEMS, ADDITEMS
                if not marks:
                    break
                mark = marks[len(marks) - 1]
                below = marks[len(marks) - 2] if len(marks) > 1 else 0
                if mark - 1 < below:
                    break
                value = stack[mark - 1]
                if type(value) is not Box or (<Box>value).built:
                    break
                target = <Box>value
                items = stack[mark:]
                if code == 0x75:
                    if not _plain_keys(items[::2]) or target.listed:
                        break  # Rules.check charges the hashing (and may refuse it)
                elif code == 0x90 and not _plain_keys(items):
                    break
                elif code == 0x65:
                    count = _collidable(items)
                    if (count and target.hashes is not None
                            and not _count_hashes(target.hashes, items)):
                        break  # Rules.check counts their hashes (the list is made for a call)
                    _add_loose(target, count)
                del stack[mark:]
                marks.pop()
                fence = below
                if target.size is not None:
                    target.size += len(items) // 2 if code == 0x75 else len(items)
                _contain(rules, target, items, max_nesting, frame_start + pos + 1)
                end = pos + 1
            elif code == 0x61 or code == 0x73:  # APPEND, SETITEM
                count = 1 if code == 0x61 else 2
                keep = len(stack) - count
                if keep - 1 < fence:
                    break
                value = stack[keep - 1]
                if type(value) is not Box or (<Box>value).built:
                    break
                target = <Box>value
                items = stack[keep:]
                if code == 0x73 and (not _plain_keys(items[:1]) or target.listed):
                    break
                elif code == 0x61:
                    count = _collidable(items)
                    if (count and target.hashes is not None
                            and not _count_hashes(target.hashes, items)):
                        break
                    _add_loose(target, count)
                del stack[keep:]
                if target.size is not None:
                    target.size += 1
                _contain(rules, target, items, max_nesting, frame_start + pos + 1)
                end = pos + 1
            elif code == 0x85 or code == 0x86 or code == 0x87:  # TUPLE1, TUPLE2, TUPLE3
                count = code - 0x84
                keep = len(stack) - count
                if keep < fence:
                    break
                items = stack[keep:]
                del stack[keep:]
                value = Tuple(items)
                _contain(rules, value, items, max_nesting, frame_start + pos + 1)
                stack.append(value)
                end = pos + 1
            elif code == 0x74:  # TUPLE
                if not marks:
                    break
                mark = marks[len(marks) - 1]
                below = marks[len(marks) - 2] if len(marks) > 1 else 0
                if mark < below:
                    break
                items = stack[mark:]
                del stack[mark:]
                marks.pop()
                fence = below
                value = Tuple(items)
                _contain(rules, value, items, max_nesting, frame_start + pos + 1)
                stack.append(value)
                end = pos + 1
            else:
                break
            opcodes += 1
            pos = end
            done += 1
    except BaseException:
        # An error of a helper (a limit that `Accounts.deepen` checks): as in `Rules.check`,
        # the opcode that raised it was counted, and `rules.end` is its end.
        rules.opcodes = opcodes + 1
        raise
    finally:
        rules.fence = fence
        rules.memo_writes = memo_writes
        memo.count = memo_count
    rules.opcodes = opcodes
    if done:
        rules.end = frame_start + pos
    return pos, done
