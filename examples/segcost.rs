//! Measures what a fresh shared-memory segment costs, to choose how
//! read_all reserves and maps memory. `cargo run --release --example segcost`
use std::os::fd::AsRawFd;
use std::time::Instant;

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

fn main() {
    let n: usize = 1 << 30;
    let name = c"/shmfetch-segcost";
    for round in 0..3 {
        unsafe {
            // A: ftruncate + fallocate + touch every page.
            let fd = libc::shm_open(
                name.as_ptr(),
                libc::O_CREAT | libc::O_RDWR | libc::O_EXCL,
                0o600,
            );
            libc::ftruncate(fd, n as i64);
            let t = Instant::now();
            libc::posix_fallocate(fd, 0, n as i64);
            let fa = ms(t);
            let p = libc::mmap(
                std::ptr::null_mut(),
                n,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            ) as *mut u8;
            let t = Instant::now();
            for i in (0..n).step_by(4096) {
                p.add(i).write_volatile(1)
            }
            let touch_fresh = ms(t);
            libc::munmap(p as _, n);
            // B: map the now-allocated pages again: touch vs MAP_POPULATE vs MADV_POPULATE_WRITE.
            let p = libc::mmap(
                std::ptr::null_mut(),
                n,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            ) as *mut u8;
            let t = Instant::now();
            for i in (0..n).step_by(4096) {
                p.add(i).write_volatile(1)
            }
            let touch_alloc = ms(t);
            libc::munmap(p as _, n);
            let t = Instant::now();
            let p = libc::mmap(
                std::ptr::null_mut(),
                n,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd,
                0,
            ) as *mut u8;
            let populate_alloc = ms(t);
            let t = Instant::now();
            for i in (0..n).step_by(4096) {
                p.add(i).write_volatile(2)
            }
            let write_after_populate = ms(t);
            println!("  writes after MAP_POPULATE: {write_after_populate:.0} ms");
            libc::munmap(p as _, n);
            let p = libc::mmap(
                std::ptr::null_mut(),
                n,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            ) as *mut u8;
            let t = Instant::now();
            let r = libc::madvise(p as _, n, 23 /* MADV_POPULATE_WRITE */);
            let madv_alloc = ms(t);
            libc::munmap(p as _, n);
            let t = Instant::now();
            libc::close(fd);
            libc::shm_unlink(name.as_ptr());
            let unlink = ms(t);
            // C: no fallocate: MADV_POPULATE_WRITE on a fresh (sparse) segment reserves and maps in one pass.
            let fd = libc::shm_open(
                name.as_ptr(),
                libc::O_CREAT | libc::O_RDWR | libc::O_EXCL,
                0o600,
            );
            libc::ftruncate(fd, n as i64);
            let p = libc::mmap(
                std::ptr::null_mut(),
                n,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            ) as *mut u8;
            let t = Instant::now();
            let r2 = libc::madvise(p as _, n, 23);
            let madv_fresh = ms(t);
            libc::munmap(p as _, n);
            let _ = fd.as_raw_fd();
            libc::close(fd);
            libc::shm_unlink(name.as_ptr());
            println!(
                "round {round}: fallocate {fa:.0} ms, touch fresh {touch_fresh:.0}, touch allocated {touch_alloc:.0}, MAP_POPULATE allocated {populate_alloc:.0}, MADV_POPULATE_WRITE allocated {madv_alloc:.0} (rc {r}), MADV_POPULATE_WRITE fresh {madv_fresh:.0} (rc {r2}), close+unlink {unlink:.0}"
            );
        }
    }
}
