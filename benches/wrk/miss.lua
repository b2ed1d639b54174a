-- Every request a key no cache has seen: the path given to wrk, with
-- `&miss=<thread>-<n>` appended (the path must already carry a query).
-- wrk runs this file once per thread; each gets its own id.
local counter = 0
local threads = 0

function setup(thread)
    threads = threads + 1
    thread:set("id", threads)
end

function init(args)
    prefix = wrk.path .. "&miss=" .. tostring(id) .. "-" .. tostring(os.time()) .. "-"
end

function request()
    counter = counter + 1
    return wrk.format("GET", prefix .. counter)
end
